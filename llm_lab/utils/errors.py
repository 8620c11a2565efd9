"""What counts as a user's mistake, and how it is reported: one line and exit code 2, never a traceback.

Used by the ``llm-lab`` command and by every script and benchmark entry point, so all of them treat bad values,
missing or unwritable files alike.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

__all__ = ["BROKEN_PIPE_EXIT", "USER_ERRORS", "CLIError", "report_user_error", "short_list"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


# Bad values (ValueError) and the file system's refusals (missing file, no space, permission: OSError).
USER_ERRORS: tuple[type[BaseException], ...] = (CLIError, ValueError, OSError)


def short_list(names: Iterable[str], limit: int = 6) -> str:
    """``"a, b, c (+2 more)"``: enough names for a one-line message."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


#: Exit code of a command whose reader went away (``llm-lab sample ... | head``): 128 + SIGPIPE, as shells report.
BROKEN_PIPE_EXIT = 141


def report_user_error(prog: str, error: BaseException) -> int:
    """Print ``prog: error: <message>`` to stderr and return exit code 2.

    A closed output pipe (``| head`` has read enough) is not an error: nothing is printed and the exit code is
    :data:`BROKEN_PIPE_EXIT`. Standard output is pointed at ``/dev/null`` so the interpreter's last flush at
    exit stays quiet too.
    """
    if isinstance(error, BrokenPipeError):
        _silence_stdout()
        return BROKEN_PIPE_EXIT
    print(f"{prog}: error: {error}", file=sys.stderr)
    return 2


def _silence_stdout() -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (captured by a test or an embedding program): nothing will flush to the pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
