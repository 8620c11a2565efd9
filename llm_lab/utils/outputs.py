"""Result files and folders a command writes at a path the user names: replaced only when llm-lab wrote them.

The rule every command follows (``llm-lab plot --out``, ``inspect --out``, ``bench ... --json/--out``,
``experiment collect --out``, ``eval --output-path``): what is at the path is replaced only if it is recognisably
an llm-lab output, only after every check passed, and atomically (the new file or folder is written beside the
old one and renamed over it: a kill at any moment leaves the old state or the new one). Anything else is refused
with one line naming the path; a symbolic link is refused (a rename would replace the link, not what it points
to); a folder given where a file is expected, or a file where a folder is, is named as such.

How an output is recognised, one mark per kind of file, written by the project with every output:

* an image (PNG, SVG, PDF, EPS, known by its first bytes): its ``Creator`` metadata is :data:`IMAGE_MARK`
  (:func:`image_metadata`; found in the file's first or last 64 KiB, where the formats keep their metadata);
* a JSON file: an object whose first key is :data:`MARK_KEY` (``"llm_lab_output"``), naming the command;
* a folder: it holds :data:`FOLDER_MARKER` (``llm_lab_output.json``, itself such a JSON file) listing every file
  the command wrote, and nothing else (a file you add to it makes the folder yours: it is then refused).

Files of other kinds carry no mark, so an existing one is never replaced (remove it yourself, or name another
path). Whole runs, packages, corpora and sweeps have their own markers and rules (``run.json``,
``manifest.json``, ...); this module is for the results commands print ``wrote ...`` about.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from llm_lab.utils.dirswap import holds_working_directory, staged_directory, unexpected_files
from llm_lab.utils.errors import short_list
from llm_lab.utils.io import atomic_output_path, atomic_write_text

__all__ = [
    "FOLDER_MARKER",
    "IMAGE_MARK",
    "MARK_KEY",
    "StagedOutput",
    "check_output_directory",
    "check_output_file",
    "image_metadata",
    "is_llm_lab_file",
    "marked_json",
    "output_directory",
    "output_file",
    "write_output_json",
]

MARK_KEY = "llm_lab_output"
IMAGE_MARK = "llm-lab output"
FOLDER_MARKER = "llm_lab_output.json"
IMAGE_SUFFIXES = (".png", ".svg", ".pdf", ".eps", ".ps")
_WINDOW = 64 * 1024  # bytes read at each end of a file to find its mark
_JSON_MARK = re.compile(rb'^\s*\{\s*"' + MARK_KEY.encode() + rb'"\s*:')


def image_metadata(path: str | Path) -> dict[str, str] | None:
    """The ``metadata`` to pass to matplotlib's ``savefig`` for ``path`` (or a bare suffix such as ``".png"``):
    the mark, or ``None`` for a format that keeps no metadata (JPEG)."""
    return {"Creator": IMAGE_MARK} if str(path).lower().endswith(IMAGE_SUFFIXES) else None


def marked_json(command: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` with the mark of ``command`` (e.g. ``"bench generate"``) as its first key."""
    return {MARK_KEY: f"llm-lab {command}", **{k: v for k, v in obj.items() if k != MARK_KEY}}


def is_llm_lab_file(path: str | Path) -> bool:
    """Whether the regular file ``path`` carries an llm-lab output mark (see the module docstring)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(_WINDOW)
        size = os.fstat(f.fileno()).st_size
        tail = b""
        if size > len(head):
            f.seek(max(size - _WINDOW, len(head)))
            tail = f.read(_WINDOW)
    if _JSON_MARK.match(head):
        return True
    mark = IMAGE_MARK.encode()
    return _is_image(head) and (mark in head or mark in tail)


def _is_image(head: bytes) -> bool:
    """Whether a file that begins with ``head`` is a PNG, PDF, PostScript or SVG image (by its content, whatever
    its name: ``plot --out fig`` writes a PNG)."""
    return head.startswith((b"\x89PNG\r\n\x1a\n", b"%PDF-", b"%!PS")) or (
        head.lstrip().startswith(b"<?xml") and b"<svg" in head
    )


def _refuse_link(path: Path, option: str, what: str) -> None:
    if path.is_symlink():
        raise ValueError(
            f"{option} {path} is a symbolic link (to {os.readlink(path)}); llm-lab writes a new {what} in its place "
            "and never through a link: give the real path (or another one)"
        )


def _refuse_file_parent(path: Path, option: str) -> None:
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise NotADirectoryError(errno.ENOTDIR, f"{option} {path}: {blocker} is a file, not a folder")


def check_output_file(path: str | Path, option: str = "--out") -> None:
    """May a command write the result file ``path``? Raise if not; change nothing.

    Allowed: a new path, or a regular file that carries an llm-lab output mark (the command's own earlier output).

    Raises:
        ValueError: ``path`` is a symbolic link, a directory, not a regular file, or a file llm-lab did not write.
        NotADirectoryError: a parent of ``path`` is a file.
    """
    path = Path(path)
    _refuse_link(path, option, "file")
    if path.is_dir():
        raise ValueError(f"{option} {path} is a directory; give the path of a file to write (e.g. {path / 'out'}...)")
    _refuse_file_parent(path, option)
    if not path.exists():
        return
    if not path.is_file():
        raise ValueError(f"{option} {path} is not a regular file (a FIFO, socket or device); give a file path")
    if not is_llm_lab_file(path):
        raise ValueError(
            f"{option} {path} exists and is not an llm-lab output (it carries no llm-lab output mark), so it is "
            "left as it is: give another path, or remove the file yourself if it may go"
        )


@contextlib.contextmanager
def output_file(path: str | Path, option: str = "--out") -> Iterator[Path]:
    """Check ``path`` (:func:`check_output_file`), then yield a temporary path beside it that replaces it atomically
    on a clean exit (:func:`llm_lab.utils.io.atomic_output_path`). The writer must put the mark in the file."""
    check_output_file(path, option)
    with atomic_output_path(path) as tmp:
        yield tmp


def write_output_json(path: str | Path, command: str, obj: Mapping[str, Any], option: str = "--json") -> Path:
    """Write the JSON object ``obj`` to ``path`` with the mark of ``command`` first, atomically, after
    :func:`check_output_file`. Returns ``Path(path)``."""
    check_output_file(path, option)
    atomic_write_text(path, json.dumps(marked_json(command, obj), indent=2, ensure_ascii=False) + "\n")
    return Path(path)


def _listed_files(folder: Path) -> list[str] | None:
    """The files the marker of ``folder`` lists, or ``None`` when it has no valid marker."""
    marker = folder / FOLDER_MARKER
    if marker.is_symlink() or not marker.is_file() or not is_llm_lab_file(marker):
        return None
    try:
        files = json.loads(marker.read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else None


def check_output_directory(path: str | Path, option: str = "--out") -> None:
    """May a command write the result folder ``path``? Raise if not; change nothing.

    Allowed: a new or empty folder, or one that holds :data:`FOLDER_MARKER` and only the files it lists.

    Raises:
        ValueError: ``path`` is a symbolic link, a file, the working directory (or holds it), or a folder holding
            anything llm-lab did not write there.
        NotADirectoryError: a parent of ``path`` is a file.
    """
    path = Path(path)
    _refuse_link(path, option, "folder")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file; give a folder (a new one, or one an llm-lab command wrote)")
    _refuse_file_parent(path, option)
    if not path.is_dir():
        return
    found = unexpected_files(path, ())
    if not found:
        if holds_working_directory(path):
            raise ValueError(f"{option} {path} is the current directory (or holds it); give a sub-folder")
        return
    listed = _listed_files(path)
    if listed is None:
        raise ValueError(
            f"{option} {path} is not empty and is not an llm-lab result folder (no {FOLDER_MARKER}; it holds "
            f"{short_list(found, 4)}), so it is left as it is: give a new or empty folder, or remove it yourself"
        )
    foreign = [name for name in found if name not in listed and name != FOLDER_MARKER]
    if foreign:
        raise ValueError(
            f"{option} {path} holds files llm-lab did not write there ({short_list(foreign, 4)}), so it is left as "
            "it is: move them out, or give another folder"
        )
    if holds_working_directory(path):
        raise ValueError(f"{option} {path} is the current directory (or holds it); give a sub-folder")


class StagedOutput:
    """The folder a command writes its results into (:attr:`path`, hidden beside the target) until it is swapped in;
    :meth:`final` names a file by where it will be."""

    def __init__(self, path: Path, target: Path) -> None:
        self.path, self.target = path, target

    def final(self, written: str | Path) -> Path:
        """Where ``written`` (a path under :attr:`path`) will be once the folder is swapped in."""
        return self.target / Path(written).relative_to(self.path)


@contextlib.contextmanager
def output_directory(path: str | Path, command: str, option: str = "--out") -> Iterator[StagedOutput]:
    """Check ``path`` (:func:`check_output_directory`), then yield an empty folder beside it to write the results
    into. On a clean exit the marker is written (listing every file) and the folder replaces ``path`` atomically
    (:func:`llm_lab.utils.dirswap.staged_directory`: locked against a second writer; an exception leaves ``path`` as
    it was). Call :func:`check_output_directory` also before long work, so a refusal comes first."""
    target = Path(path)
    check_output_directory(target, option)
    with staged_directory(target) as staged:
        check_output_directory(target, option)  # again, under the lock: nothing of someone else's came meanwhile
        yield StagedOutput(staged, target)
        check_output_directory(target, option)  # and after the work: a file the user saved there meanwhile is kept
        files = [name for name in unexpected_files(staged, ()) if name != FOLDER_MARKER]
        atomic_write_text(
            staged / FOLDER_MARKER, json.dumps(marked_json(command, {"files": files}), indent=2) + "\n"
        )
