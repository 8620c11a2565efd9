"""`llm-lab --help` stays fast: building the parser must not import torch, numpy, transformers, matplotlib or
FastAPI (about a second of CPU each time the command starts); the commands import them when they run."""

from __future__ import annotations

import subprocess
import sys

import llm_lab.cli

HEAVY = ("torch", "numpy", "transformers", "matplotlib", "fastapi", "uvicorn", "safetensors", "tokenizers")
def test_registering_the_subcommands_imports_no_heavy_library():
    modules = list(llm_lab.cli._COMMAND_MODULES)
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
