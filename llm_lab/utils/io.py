"""Atomic file writes: a crash at any moment leaves either the old file or the new one, never half of one.

Write to a temporary file in the same directory, flush and fsync it, then ``os.replace`` it over the target
(atomic on POSIX and Windows) and fsync the directory so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_output_path",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_torch_save",
]


def _default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (0o666 less the umask); mkstemp's is 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; on a clean exit that file replaces ``path`` atomically.

    For writers that open their file by name (:func:`atomic_write` opens it for you). The file is fsynced, given the
    mode a plain ``open`` would give, renamed over ``path``, and the directory fsynced. On an exception the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid in the name lets a later run tell a dead writer's leftover from a live write.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with tmp.open("rb+") as written:
            os.fchmod(written.fileno(), _default_file_mode())
            os.fsync(written.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    with atomic_output_path(path) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as f:
            yield f


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_torch_save(obj: Any, path: str | Path, save: Callable[[Any, IO[bytes]], None] | None = None) -> None:
    """``torch.save(obj, path)``, atomically."""
    import torch

    with atomic_write(path, "wb") as f:
        (save or torch.save)(obj, f)
