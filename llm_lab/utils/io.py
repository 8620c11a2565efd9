"""Atomic file writes: a crash at any moment leaves either the old file or the new one, never half of one.

Write to a temporary file in the same directory, flush and fsync it, then ``os.replace`` it over the target
(atomic on POSIX and Windows) and fsync the directory so the rename itself survives a power cut.

A full disk (``ENOSPC``, or a quota: ``EDQUOT``) is one error, :class:`DiskFullError`, whichever writer hit it
(Python's own file writes, ``torch.save``, the Rust safetensors writer): it names the path, the space the write
needs where that is known and the space free, after the partial file was removed. A write whose size is known
beforehand (bytes, tensors) is refused before it starts when it cannot fit, so the disk is not filled for nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "DiskFullError",
    "atomic_output_path",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "disk_full_error",
    "follow_umask",
    "is_disk_full",
    "reporting_disk_full",
]

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How writers that do not raise OSError (the Rust safetensors writer) word the two errors.
_DISK_FULL_WORDS = ("no space left on device", "disk quota exceeded", "os error 28", "os error 122")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _free_bytes(path: Path) -> int | None:
    """Free space for an unprivileged writer on the file system of ``path`` (its nearest existing ancestor)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            with contextlib.suppress(OSError):
                return shutil.disk_usage(candidate).free
            return None
    return None


class DiskFullError(OSError):
    """A write that did not fit: the file system is full or the user's quota is spent.

    An ``OSError`` (``errno`` ``ENOSPC``), so it is one of the project's user errors (one line, exit code 2). By
    the time it is raised the partial file is gone and the previous state is intact.

    Attributes:
        path: what was being written.
        needed: the bytes the write needs, or ``None`` where that is not known.
        free: the bytes free when it failed, or ``None``.
    """

    def __init__(self, path: str | Path, needed: int | None = None, free: int | None = None) -> None:
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        self.path, self.needed, self.free = Path(path), needed, free

    def __str__(self) -> str:
        if self.needed is not None and (self.free is None or self.needed > self.free):
            need = f"needs at least {_size(self.needed)}"
        else:  # the size is a lower bound: what the file system keeps for itself and the file's framing did not fit
            need = "needs more space"
        free = f", {_size(self.free)} free" if self.free is not None else ""
        return (
            f"no space left on device writing {self.path} ({need}{free}); free some space or write elsewhere. "
            "The previous state is intact and the partial write was removed"
        )

    def __reduce__(self):  # pickled across worker processes with its own arguments
        return (type(self), (self.path, self.needed, self.free))


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from or during) is a full disk or a spent quota.

    ``torch.save`` reports a failed write as a ``RuntimeError`` raised while handling the ``OSError``; the Rust
    safetensors writer raises its own error whose text carries the OS error.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        if not isinstance(current, OSError) and any(w in str(current).lower() for w in _DISK_FULL_WORDS):
            return True
        current = current.__cause__ or current.__context__
    return False


def disk_full_error(path: str | Path, needed: int | None = None) -> DiskFullError:
    """The :class:`DiskFullError` for a write of ``needed`` bytes (``None``: unknown) to ``path``."""
    return DiskFullError(path, needed, _free_bytes(Path(path)))


@contextlib.contextmanager
def reporting_disk_full(path: str | Path, needed: int | None = None) -> Iterator[None]:
    """Turn a full disk inside the block, however the writer reported it, into a :class:`DiskFullError` naming
    ``path`` (the one place a writer's own wording of ENOSPC/EDQUOT becomes the project's one line)."""
    try:
        yield
    except DiskFullError:
        raise
    except BaseException as e:
        if is_disk_full(e):
            raise disk_full_error(path, needed) from None
        raise


def _check_fits(path: Path, needed: int | None) -> None:
    """Refuse a write of a known size that cannot fit, before a byte is written."""
    if needed is None:
        return
    free = _free_bytes(path)
    if free is not None and needed > free:
        raise DiskFullError(path, needed, free)


def _default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (0o666 less the umask); mkstemp's is 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def follow_umask(path: str | Path) -> None:
    """Give a file another library wrote the mode every other file gets (``open``'s: 0o666 less the umask).

    Writers that go through a temporary file (``transformers``' ``save_pretrained`` writing safetensors) leave
    mkstemp's 0o600, so a shared group or a web server could read every file of a directory but the weights.
    """
    os.chmod(path, _default_file_mode())


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output_path(path: str | Path, *, size: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; on a clean exit that file replaces ``path`` atomically.

    For writers that open their file by name (:func:`atomic_write` opens it for you). The file is fsynced, given the
    mode a plain ``open`` would give, renamed over ``path``, and the directory fsynced. On an exception the
    temporary file is removed and ``path`` is untouched; a full disk, however the writer reported it, becomes a
    :class:`DiskFullError`.

    Args:
        path: the file to write.
        size: the bytes about to be written, when known (at least): a write that cannot fit is refused first.
    """
    path = Path(path)
    with reporting_disk_full(path, size):
        path.parent.mkdir(parents=True, exist_ok=True)
        _check_fits(path, size)
        # The writer's pid in the name lets a later run tell a dead writer's leftover from a live write.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with reporting_disk_full(path, size):
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
def atomic_write(path: str | Path, mode: str = "wb", *, size: int | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path`` atomically
    (:func:`atomic_output_path`: on an exception ``path`` is untouched, a full disk is a :class:`DiskFullError`).

    Args:
        path: the file to write.
        mode: ``"wb"`` or ``"w"`` (UTF-8).
        size: the bytes about to be written, when known (at least): a write that cannot fit is refused first.
    """
    with atomic_output_path(path, size=size) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as f:
            yield f


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path, "wb", size=len(data)) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w", size=len(text)) as f:
        f.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_torch_save(obj: Any, path: str | Path, save: Callable[[Any, IO[bytes]], None] | None = None) -> None:
    """``torch.save(obj, path)``, atomically; refused before writing when its tensors alone cannot fit."""
    import torch

    with atomic_write(path, "wb", size=_tensor_bytes(obj)) as f:
        (save or torch.save)(obj, f)


def _tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (nested dicts, lists, tuples): a lower bound of its ``torch.save`` size."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0
