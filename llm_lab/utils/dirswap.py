"""Replace a whole directory so that a kill at any moment leaves the old one or the new one, never neither.

A writer builds the new state beside the old one and swaps it in; the next writer (or reader) that finds an
interrupted swap finishes it. Every name used is hidden, sits beside the target, and carries the process id of
its writer, so only leftovers of *dead* writers are ever touched and nothing of anyone else's is:

    .NAME.tmp-PID-XXXX    being written, incomplete           -> recovery deletes it
    .NAME.new-PID-XXXX    complete, waiting to be swapped in  -> recovery swaps it in
    .NAME.old-PID-XXXX    the previous NAME, moved aside      -> recovery deletes it once NAME exists, else puts it back

The swap is ``tmp -> new`` (the new state is now known complete), ``NAME -> old``, ``new -> NAME``, delete
``old``. After a kill between any two of these steps, :func:`recover_directory` leaves exactly one complete state
at ``NAME``: the new one whenever it was complete, the old one otherwise.

Example:
    >>> with staged_directory("artifacts/pkg") as tmp:   # doctest: +SKIP
    ...     (tmp / "config.json").write_text("{}")
    ... # now artifacts/pkg holds config.json; an exception inside the block leaves the old artifacts/pkg as it was
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from llm_lab.utils.dirlock import lock_directory, lock_path, remove_stale_lock
from llm_lab.utils.io import DiskFullError, _fsync_dir, reporting_disk_full

__all__ = [
    "PendingReplacement",
    "holds_working_directory",
    "recover_directory",
    "remove_stale_temp_files",
    "staged_directory",
    "swap_in",
    "unexpected_files",
]

def _leftover_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.(tmp|new|old)-(\d+)-([0-9a-f]{{8}})$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _sibling(target: Path, kind: str, token: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{token}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def recover_directory(target: str | Path) -> list[str]:
    """Finish or roll back swaps of ``target`` that a killed process left half done, and remove its stale lock.

    Only entries named by this module whose writer process is no longer alive are touched, and a lock file only
    when no process holds it.

    Returns:
        One line per action taken (empty when there was nothing to do), for a command to report.
    """
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return []
    stale_lock = remove_stale_lock(target)
    pattern = _leftover_pattern(target.name)
    found: dict[str, dict[str, Path]] = {}
    for entry in parent.iterdir():
        match = pattern.match(entry.name)
        if match and not _pid_alive(int(match.group(2))):
            found.setdefault(f"{match.group(2)}-{match.group(3)}", {})[match.group(1)] = entry
    actions: list[str] = []
    for token, parts in sorted(found.items()):
        if "tmp" in parts:
            _remove(parts["tmp"])
            actions.append(f"removed {parts['tmp'].name} (an unfinished write)")
        new, old = parts.get("new"), parts.get("old")
        if new is not None:
            if target.exists() or target.is_symlink():
                aside = old if old is not None else _sibling(target, "old", token)
                if old is not None:  # a target exists beside an old one: that old one is older still
                    _remove(old)
                os.replace(target, aside)
                os.replace(new, target)
                _remove(aside)
            else:
                os.replace(new, target)
                if old is not None:
                    _remove(old)
            actions.append(f"finished an interrupted replacement of {target.name}")
        elif old is not None:
            if target.exists() or target.is_symlink():
                _remove(old)
                actions.append(f"removed {old.name} (the previous state, already replaced)")
            else:
                os.replace(old, target)
                actions.append(f"restored {target.name} from an interrupted replacement")
    if stale_lock:
        actions.append(f"removed {lock_path(target).name} (the lock of a writer that was killed)")
    if actions:
        _fsync_dir(parent)
    return actions


def swap_in(staged: str | Path, target: str | Path) -> None:
    """Move the complete directory ``staged`` (a ``.NAME.tmp-*`` made by :func:`staged_directory`) to ``target``,
    replacing what is there. The caller must have checked that whatever is at ``target`` may be replaced."""
    staged, target = Path(staged), Path(target)
    match = _leftover_pattern(target.name).match(staged.name)
    if match is None or match.group(1) != "tmp" or staged.parent != target.parent:
        raise ValueError(f"{staged} is not a staging directory for {target}")
    token = f"{match.group(2)}-{match.group(3)}"
    _fsync_dir(staged)
    new = _sibling(target, "new", token)
    os.replace(staged, new)  # from here on the new state counts as complete
    _fsync_dir(target.parent)
    if target.exists() or target.is_symlink():
        old = _sibling(target, "old", token)
        os.replace(target, old)
        os.replace(new, target)
        _fsync_dir(target.parent)
        _remove(old)
    else:
        os.replace(new, target)
    _fsync_dir(target.parent)


def _make_staging(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = _sibling(target, "tmp", f"{os.getpid()}-{secrets.token_hex(4)}")
    staged.mkdir()
    return staged


class PendingReplacement:
    """A new state of ``target`` built in a hidden directory beside it, swapped in only by :meth:`commit`.

    Until then ``target`` keeps its old state, whatever happens: :meth:`discard` (or a kill, after which the next
    :func:`recover_directory` removes the leftover) drops the new state. :func:`staged_directory` is the common
    case (commit at the end of a block); a training run that replaces an earlier one keeps the replacement
    pending until the new run has written its first checkpoint, so the old run stays until there is a new one
    to resume. The caller holds ``target``'s lock (:func:`llm_lab.utils.dirlock.lock_directory`).

    Interrupted swaps of ``target`` by dead processes are recovered first; a full disk while making the staging
    directory is a :class:`~llm_lab.utils.io.DiskFullError`.
    """

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target)
        self.committed = False
        recover_directory(self.target)
        with reporting_disk_full(self.target):
            self.path = _make_staging(self.target)

    @contextlib.contextmanager
    def writing(self) -> Iterator[Path]:
        """A block that writes the new state into :attr:`path` (it may :meth:`commit` inside); an exception in it
        discards the new state if not committed yet, and a full disk, whatever wrote, becomes one
        :class:`~llm_lab.utils.io.DiskFullError` naming the file by its final name under ``target``."""
        try:
            with reporting_disk_full(self.target):
                yield self.path
        except DiskFullError as e:
            self.discard()
            if e.path.is_relative_to(self.path):  # the hidden staging name means nothing to the user
                raise DiskFullError(self.target / e.path.relative_to(self.path), e.needed, e.free) from None
            raise
        except BaseException:
            self.discard()
            raise

    def commit(self) -> Path:
        """Swap the new state in (the old one is deleted once the new one is in place); returns ``target``."""
        swap_in(self.path, self.target)
        self.committed = True
        return self.target

    def discard(self) -> None:
        """Remove the new state unless it was committed; ``target`` is as it was."""
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty hidden directory beside ``target``; on a clean exit it replaces ``target``.

    ``target`` is locked for the whole block (:func:`llm_lab.utils.dirlock.lock_directory`: a second writer is
    refused, a symbolic link is refused). Interrupted swaps of ``target`` by dead processes are recovered first.
    On an exception (or a kill) inside the block the staging directory is removed (by the next call, after a kill)
    and ``target`` is untouched; a full disk, whatever wrote into the block, becomes one
    :class:`~llm_lab.utils.io.DiskFullError`. Checks that may refuse the replacement belong before the block, or
    inside it: nothing at ``target`` changes until it ends.
    """
    target = Path(target)
    with lock_directory(target):
        pending = PendingReplacement(target)
        with pending.writing() as staged:
            yield staged
        pending.commit()


def remove_stale_temp_files(directory: str | Path) -> list[str]:
    """Delete the temporary files that writes killed midway left in ``directory``.

    Covers the files of :func:`llm_lab.utils.io.atomic_write` (``.NAME.PID.XXXX.tmp``) and the staging
    directories of this module, in each case only those whose writer process is gone.

    Returns:
        The names removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    atomic = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")
    staging = re.compile(r"^\..+\.(tmp|new|old)-(\d+)-[0-9a-f]{8}$")
    removed: list[str] = []
    targets: set[str] = set()
    for entry in directory.iterdir():
        match = atomic.match(entry.name)
        if match and entry.is_file() and not _pid_alive(int(match.group(1))):
            _remove(entry)
            removed.append(entry.name)
            continue
        match = staging.match(entry.name)
        if match:
            targets.add(entry.name[1 : entry.name.rindex(f".{match.group(1)}-")])
    for name in sorted(targets):
        if recover_directory(directory / name):
            removed.append(name)
    return removed


def unexpected_files(directory: str | Path, expected: Iterable[str]) -> list[str]:
    """Files (relative POSIX paths) under ``directory`` that are not in ``expected``, sorted.

    Use before replacing or deleting a directory the project believes it wrote: anything returned here is not
    the project's and must not be deleted. Symbolic links count as files and are never followed.
    """
    directory = Path(directory)
    allowed = set(expected)
    found: list[str] = []
    for root, dirs, files in os.walk(directory, followlinks=False):
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            rel = (Path(root) / name).relative_to(directory).as_posix()
            if rel not in allowed:
                found.append(rel)
    return sorted(found)


def holds_working_directory(path: str | Path) -> bool:
    """Whether ``path`` is the current working directory or one of its ancestors.

    Such a directory cannot be replaced by a swap: the process would go on working in the old, deleted one.
    """
    try:
        target = Path(path).resolve()
        cwd = Path.cwd().resolve()
    except OSError:
        return False
    return cwd == target or target in cwd.parents
