"""The ``--threads`` option every ``llm-lab`` command and every script shares (parsing only).

The setting a command runs with, first match wins:

1. ``--threads N|auto`` on the command line;
2. the ``LLM_LAB_THREADS`` environment variable (``N`` or ``auto``), for a machine-wide preference;
3. ``OMP_NUM_THREADS``, when set (``torchrun`` sets it to 1 per process): torch already follows it, so it is
   left alone;
4. ``auto``: one thread per core that is idle at start-up (:mod:`llm_lab.utils.threads`).

Steps 2 to 4 are :func:`llm_lab.utils.threads.default_threads`, the rule the library's ``threads="auto"`` follows
too.

``llm-lab train`` also honours ``train.threads`` in the run config; an explicit ``--threads`` overrides it.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from llm_lab.utils.threads import THREADS_ENV, Threads, apply_threads, default_threads, parse_threads

__all__ = ["THREADS_ENV", "THREADS_HELP", "add_threads_argument", "apply_threads_option", "threads_setting"]

THREADS_HELP = (
    f"CPU threads for torch: a number (capped at the usable CPUs), or auto (one per core idle at start-up). "
    f"Default: ${THREADS_ENV}, else "
    "$OMP_NUM_THREADS as torch reads it, else auto"
)


def _threads_type(text: str) -> Threads:
    try:
        return parse_threads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads`` (default ``None``: not given, so :func:`threads_setting` looks further)."""
    parser.add_argument("--threads", type=_threads_type, default=None, metavar="N|auto", help=THREADS_HELP)


def threads_setting(flag: Threads | None, environ: Mapping[str, str] | None = None) -> Threads | None:
    """The setting to apply (see the module docstring); ``None`` leaves torch as ``OMP_NUM_THREADS`` set it.

    Raises:
        ValueError: ``LLM_LAB_THREADS`` holds something other than ``auto`` or a positive integer.
    """
    if flag is not None:
        return flag
    return default_threads(environ)


def apply_threads_option(flag: Threads | None, environ: Mapping[str, str] | None = None) -> int | None:
    """Apply ``--threads`` (or its defaults) to torch; returns the thread count set, ``None`` if left alone."""
    setting = threads_setting(flag, environ)
    return None if setting is None else apply_threads(setting)
