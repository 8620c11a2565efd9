"""The ``llm-lab`` command line: argument parsing only, each subcommand a few lines over the library.

Each subcommand group lives in its own module with a ``register(subparsers)`` function that adds its
parsers and sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).
Add a module to ``_COMMAND_MODULES`` to add a group.

Every command (each parser that sets ``func``) gets the shared ``--threads`` option here, once, and it is
applied before the command runs (:mod:`llm_lab.cli.threads`). Scripts that are a command under another name
go through :func:`run_command`, so their ``--help`` shows their own name.

User mistakes (a ``ValueError``, a missing file) end with a one-line ``llm-lab: error: ...`` and exit code 2,
never a traceback. Python warnings print as one ``llm-lab: warning: ...`` line (no file path, no category). Ctrl+C
ends a command with ``llm-lab: interrupted`` and exit code 130, and SIGTERM with ``llm-lab: terminated (SIGTERM)``
and exit code 143, also while the command is still starting (both handlers are installed first thing in
:func:`main`, before the subcommands are imported; :mod:`llm_lab.utils.signals`: a training step in progress
finishes and is checkpointed first).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence

from llm_lab import __version__
from llm_lab.cli.threads import add_threads_argument, apply_threads_option
from llm_lab.utils.errors import USER_ERRORS, CLIError, report_user_error
from llm_lab.utils.malloc import retain_freed_memory
from llm_lab.utils.signals import Stopped, install_stop_handler

__all__ = ["USER_ERRORS", "CLIError", "build_parser", "main", "report_user_error", "run_command"]

# Modules under llm_lab.cli, each with register(subparsers). Order is the order in --help.
_COMMAND_MODULES: tuple[str, ...] = (
    "train",
    "data",
    "tokenizer",
    "plot",
    "sample",
    "evaluate",
    "inspect",
    "package",
    "hf",
    "gguf",
    "bench",
    "experiment",
    "sweep",
    "serve",
    "chat",
)


class LabParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that keeps its subcommands (``name -> parser``) in ``subcommands``, so the command
    tree can be walked. Nested groups are ``LabParser`` too (``add_subparsers`` makes parsers of its own class)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.subcommands: dict[str, argparse.ArgumentParser] = {}

    def add_subparsers(self, **kwargs):  # type: ignore[override]
        action = super().add_subparsers(**kwargs)
        self.subcommands = action.choices  # filled as the groups call add_parser
        return action


def _commands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser under ``parser`` that runs something (sets ``func``)."""
    if parser.get_default("func") is not None:
        yield parser
    for child in getattr(parser, "subcommands", {}).values():
        yield from _commands(child)


def build_parser() -> argparse.ArgumentParser:
    parser = LabParser(
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
    for command in _commands(parser):
        add_threads_argument(command)
    return parser


def warning_line(prog: str) -> Callable[..., str]:
    """A ``warnings.formatwarning`` that writes ``prog: warning: <message>`` on one line (no path, no category).

    The format, not the display: whoever records warnings instead (``pytest.warns``, ``catch_warnings(record=True)``)
    still gets them."""

    def format_warning(message, category, filename, lineno, line=None) -> str:
        text = " ".join(str(message).split())  # one line, whatever the message's own line breaks
        return f"{prog}: warning: {text}\n"

    return format_warning


@contextlib.contextmanager
def quiet_startup_interrupts(prog: str) -> Iterator[None]:
    """While the command starts (imports, argument parsing), Ctrl+C ends the process at once with
    ``prog: interrupted`` and exit code 130, and SIGTERM with ``prog: terminated (SIGTERM)`` and exit code 143,
    instead of a ``KeyboardInterrupt`` traceback from whatever import it landed in (or, for SIGTERM, a death by the
    signal with no word). Afterwards the previous SIGINT handler is back for the command itself (training saves a
    checkpoint on Ctrl+C) and SIGTERM is a clean stop (:func:`llm_lab.utils.signals.install_stop_handler`). A no-op
    off the main thread, where signal handlers cannot be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stopped(signum, _frame) -> None:
        what = "interrupted" if signum == signal.SIGINT else f"terminated ({signal.Signals(signum).name})"
        os.write(2, f"{prog}: {what}\n".encode())
        os._exit(128 + signum)  # nothing of the command ran yet: nothing to save or flush

    previous = signal.signal(signal.SIGINT, stopped)
    signal.signal(signal.SIGTERM, stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        install_stop_handler()  # SIGTERM from here on: a clean stop like Ctrl+C, exit 143


def _run(make_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None, prog: str) -> int:
    """Build the parser (importing the subcommands), parse, apply ``--threads`` (which imports torch), keep freed
    memory for reuse, run the command; user errors: one line and exit code 2; warnings: one line each; Ctrl+C: one
    line and exit code 130; SIGTERM: one line and exit code 143, from the first moment on."""
    previous_format = warnings.formatwarning
    warnings.formatwarning = warning_line(prog)
    try:
        with quiet_startup_interrupts(prog):  # first thing: the imports of the subcommands are interruptible
            parser = make_parser()
            args = parser.parse_args(argv)
            if not getattr(args, "func", None):
                parser.print_help()
                return 2
            apply_threads_option(args.threads)
            retain_freed_memory()  # tensor temporaries are reused, not faulted in again (llm_lab.utils.malloc)
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        return report_user_error(prog, e)
    except KeyboardInterrupt as e:
        stopped = isinstance(e, Stopped)
        print(f"{prog}: {e if stopped else 'interrupted'}", file=sys.stderr)
        return e.exit_code if stopped else 130
    finally:
        warnings.formatwarning = previous_format


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``llm-lab`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    return _run(build_parser, argv, "llm-lab")


def run_command(command: Sequence[str], argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the ``llm-lab`` command ``command`` (e.g. ``["bench", "attention"]``) as a script of its own.

    Args:
        command: the subcommand path.
        argv: the script's arguments (default: ``sys.argv[1:]``).
        prog: the name in usage and error lines (default: the script's file name, as argparse shows it).
    """
    prog = prog or os.path.basename(sys.argv[0])

    def make_parser() -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = build_parser()
        for name in command:
            parser = parser.subcommands[name]  # type: ignore[attr-defined]
        parser.prog = prog
        return parser

    return _run(make_parser, argv, prog)


if __name__ == "__main__":
    sys.exit(main())
