"""One writer per directory: the lock every command takes on a directory it writes, and the symbolic-link rule.

Every directory the project writes (a run, a package, a Hugging Face export, a prepared corpus, a sweep) is
written under :func:`lock_directory`. The lock is a file beside the directory::

    PARENT/.NAME.lock     "PID HOST" of the process writing PARENT/NAME; removed when it is done

held with ``flock``, so the kernel releases it when its process dies however it dies: the lock file a killed
writer left behind is stale and the next writer takes it over. A second writer while the first is alive gets
:class:`DirectoryLockedError`, one line naming the holder's pid and host. Beside the directory rather than in
it, because a directory is replaced by swapping a new one in (:mod:`llm_lab.utils.dirswap`) and the lock must
outlive the swap. Within one process the lock is re-entrant (a command that holds it may call a library function
that takes it again).

Symbolic links: a directory given as a symbolic link (``--out link``, dangling or not) is refused, by every
command, here in one place (:func:`refuse_symlink`): a directory is replaced by renaming a new one over it,
which would replace the link itself and leave its target behind. Give the directory the link points to.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from llm_lab.utils.io import reporting_disk_full

try:
    import fcntl
except ImportError:  # Windows: the pid in the lock file is all there is
    fcntl = None  # type: ignore[assignment]

__all__ = ["DirectoryLockedError", "lock_directory", "lock_path", "refuse_symlink", "remove_stale_lock"]

# Directories this process holds: absolute path -> (lock file descriptor, depth).
_held: dict[str, list[int]] = {}


class DirectoryLockedError(OSError):
    """Another live process is writing the directory (a user error: one line naming its pid and host)."""

    def __init__(self, target: str | Path, pid: int | None, host: str | None) -> None:
        super().__init__(errno.EBUSY, os.strerror(errno.EBUSY), str(target))
        self.target, self.pid, self.host = Path(target), pid, host

    def __str__(self) -> str:
        holder = f"pid {self.pid}" if self.pid is not None else "a process that has not written its pid yet"
        if self.host:
            holder += f" on {self.host}"
        return (
            f"{self.target} is being written by another llm-lab command ({holder}; lock file "
            f"{lock_path(self.target)}); wait for it to finish or stop it, then run this again"
        )

    def __reduce__(self):
        return (type(self), (self.target, self.pid, self.host))


def lock_path(target: str | Path) -> Path:
    """``PARENT/.NAME.lock``, the lock file of the directory ``PARENT/NAME``."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


def refuse_symlink(target: str | Path) -> None:
    """Refuse a directory given as a symbolic link (the one rule of every command that writes a directory).

    Raises:
        ValueError: ``target`` is a symbolic link (dangling or not); the message names where it points.
    """
    target = Path(target)
    if target.is_symlink():
        raise ValueError(
            f"{target} is a symbolic link (to {os.readlink(target)}); llm-lab writes only into a real directory, "
            "because replacing one swaps a new directory in and would replace the link, not what it points to: "
            "give the directory itself (or another path)"
        )


def _holder(fd: int) -> tuple[int | None, str | None]:
    """The pid and host a lock file records (the holder may be between taking the lock and writing them)."""
    for _ in range(20):
        os.lseek(fd, 0, os.SEEK_SET)
        fields = os.read(fd, 256).decode("utf-8", "replace").split()
        if fields and fields[0].isdigit():
            return int(fields[0]), (fields[1] if len(fields) > 1 else None)
        time.sleep(0.01)
    return None, None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _take(fd: int) -> bool:
    """Lock the open lock file; ``False`` when a live process holds it."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as e:  # a file system without flock: fall back to the recorded pid
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
    pid, host = _holder(fd) if os.fstat(fd).st_size else (None, None)
    return pid is None or pid == os.getpid() or host != socket.gethostname() or not _pid_alive(pid)


def _acquire(target: Path) -> int:
    lock = lock_path(target)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            if not _take(fd):
                pid, host = _holder(fd)
                raise DirectoryLockedError(target, pid, host)
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed this file between our open and our lock: start again
                os.close(fd)
                continue
            holder = f"{os.getpid()} {socket.gethostname()}\n".encode()
            try:
                os.ftruncate(fd, 0)
                os.write(fd, holder)
            except OSError:
                lock.unlink(missing_ok=True)  # ours, and empty: a full disk must not leave a lock behind
                raise
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise


def _key(target: Path) -> str:
    return os.path.join(os.path.realpath(target.parent), target.name)


def remove_stale_lock(target: str | Path) -> bool:
    """Delete the lock file of ``target`` when no live process holds it (a killed writer's); ``True`` if it did."""
    target = Path(target)
    lock = lock_path(target)
    if _key(target) in _held or not lock.is_file():
        return False
    try:
        fd = os.open(lock, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        if not _take(fd):
            return False
        with contextlib.suppress(OSError):
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                lock.unlink()
                return True
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def lock_directory(target: str | Path) -> Iterator[Path]:
    """Hold the write lock of the directory ``target`` for the block (``target`` need not exist yet).

    Refuses a symbolic link first (:func:`refuse_symlink`). A lock file a dead process left is taken over.

    Raises:
        DirectoryLockedError: another live process holds it; the message names its pid and host.
        ValueError: ``target`` is a symbolic link.
    """
    target = Path(target)
    refuse_symlink(target)
    key = _key(target)
    if key in _held:
        _held[key][1] += 1
        try:
            yield target
        finally:
            entry = _held.get(key)  # gone if an interrupt already unwound the outer hold
            if entry is not None:
                entry[1] -= 1
        return
    with reporting_disk_full(lock_path(target)):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(target)
    _held[key] = [fd, 1]
    try:
        yield target
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            lock_path(target).unlink()  # while still holding it: a waiting writer then sees the file is gone
        os.close(fd)
