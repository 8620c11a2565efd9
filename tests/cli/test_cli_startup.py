"""`llm-lab --help` stays fast: building the parser must not import torch, numpy, transformers, matplotlib or
FastAPI (about a second of CPU each time the command starts); the commands import them when they run."""

from __future__ import annotations

import subprocess
import sys

import llm_lab.cli

HEAVY = ("torch", "numpy", "transformers", "matplotlib", "fastapi", "uvicorn", "safetensors", "tokenizers")
# Still imports torch at module level (its imports move into the command by the trainer's owner); remove it from
# here then, so the test covers every subcommand.
NOT_YET_LAZY = {"train"}


def test_registering_the_subcommands_imports_no_heavy_library():
    modules = [name for name in llm_lab.cli._COMMAND_MODULES if name not in NOT_YET_LAZY]
    code = (
        "import argparse, importlib, sys\n"
        "sub = argparse.ArgumentParser().add_subparsers()\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module('llm_lab.cli.' + name).register(sub)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"imported at start-up: {result.stdout.strip()}"
