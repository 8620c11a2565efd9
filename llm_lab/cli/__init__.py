"""The ``llm-lab`` command line: argument parsing only, each subcommand a few lines over the library.

Each subcommand group lives in its own module with a ``register(subparsers)`` function that adds its
parsers and sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).
Add a module to ``_COMMAND_MODULES`` to add a group.

User mistakes (a ``ValueError``, a missing file) end with a one-line ``llm-lab: error: ...`` and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from llm_lab import __version__
from llm_lab.utils.errors import USER_ERRORS, CLIError, report_user_error

__all__ = ["USER_ERRORS", "CLIError", "build_parser", "main", "report_user_error"]

# Modules under llm_lab.cli, each with register(subparsers). Order is the order in --help.
_COMMAND_MODULES: tuple[str, ...] = (
    "train",
    "data",
    "plot",
    "sample",
    "evaluate",
    "package",
    "hf",
    "bench",
    "experiment",
    "sweep",
    "serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-lab", description="foundry-llm: train, sample, package and serve small GPT models."
    )
    parser.add_argument("--version", action="version", version=f"llm-lab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"llm_lab.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"llm_lab.cli.{name}":
                continue  # a subcommand group not written yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``llm-lab`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        return report_user_error("llm-lab", e)
    except KeyboardInterrupt:
        print("llm-lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
