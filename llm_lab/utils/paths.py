"""What a path given as input is, in words, so a refusal says it: "is a directory", "is a FIFO (named pipe)".

``Path.is_file()`` is False for a FIFO, a socket or a device as much as for a missing file, so a check built on it
said "does not exist" of a named pipe that plainly does. :func:`path_kind` tells them apart, and
:func:`check_input_file` is the one check for a flag that takes a regular file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["check_input_file", "path_kind"]

_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def path_kind(path: str | os.PathLike) -> str | None:
    """``"a regular file"``, ``"a directory"``, ``"a FIFO (named pipe)"``, ``"a character device"``, ``"a block
    device"``, ``"a socket"``, or ``None`` when nothing is there (links are followed; a dangling one is nothing)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except NotADirectoryError:  # a path through a file (file.txt/x): nothing can be there
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def check_input_file(path: str | os.PathLike, flag: str, expected: str = "a text file") -> Path:
    """``path`` if it is a regular file; else a one-line error naming ``flag`` and saying what is there.

    Raises:
        FileNotFoundError: nothing there.
        ValueError: a directory, a FIFO, a socket or a device.
    """
    path = Path(path)
    kind = path_kind(path)
    if kind is None:
        raise FileNotFoundError(f"{flag} {path} does not exist; give {expected}")
    if kind != "a regular file":
        raise ValueError(f"{flag} {path} is {kind}, not a file; give {expected}")
    return path
