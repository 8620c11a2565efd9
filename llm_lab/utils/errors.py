"""What counts as a user's mistake, and how it is reported: one line and exit code 2, never a traceback.

Used by the ``llm-lab`` command and by every script and benchmark entry point, so all of them treat bad values,
missing or unwritable files alike.
"""

from __future__ import annotations

import sys

__all__ = ["USER_ERRORS", "CLIError", "report_user_error"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


# Bad values (ValueError) and the file system's refusals (missing file, no space, permission: OSError).
USER_ERRORS: tuple[type[BaseException], ...] = (CLIError, ValueError, OSError)


def report_user_error(prog: str, error: BaseException) -> int:
    """Print ``prog: error: <message>`` to stderr and return exit code 2."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    return 2
