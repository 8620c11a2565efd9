"""The run directory's ownership rule: which directories a run may be written into, and which run it may replace
(only one this project wrote and can recognise by ``run.json``'s marker, holding nothing but a run's files).
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from llm_lab.core.train.checkpoint import CHECKPOINT_DIR, RUN_FILE
from llm_lab.core.train.loggers import is_logger_file
from llm_lab.core.train.run_config import RUN_FORMAT_VERSION
from llm_lab.core.train.trainer import RUNTIME_FILE
from llm_lab.utils.dirlock import refuse_symlink
from llm_lab.utils.dirswap import holds_working_directory, recover_directory, remove_stale_temp_files, unexpected_files
from llm_lab.utils.json_input import load_json_file

RUN_KIND = "llm-lab run"  # run.json's marker: only a directory whose run.json carries it may be replaced
# Files a run writes besides run.json, its tokenizer (listed in run.json's "files") and checkpoints/*.pt:
# the metrics and samples of the Trainer, and the default figure of `llm-lab plot`.
_RUN_FILES = frozenset({RUN_FILE, RUNTIME_FILE, "metrics.csv", "samples.txt", "loss.png"})


def _is_run_file(name: str, listed: set[str]) -> bool:
    """Whether ``name`` (relative POSIX path) is a file the project writes into a run directory."""
    if name in _RUN_FILES or name in listed or is_logger_file(name):
        return True
    folder, _, file = name.partition("/")
    return folder == CHECKPOINT_DIR and "/" not in file and file.endswith(".pt") and not file.startswith(".")


def _recognised_run(out: Path) -> dict[str, Any]:
    """``run.json`` of ``out`` when this project wrote it (marker and format version), else ``ValueError``."""
    run_json = out / RUN_FILE
    data = load_json_file(run_json)
    if not isinstance(data, dict) or data.get("kind") != RUN_KIND or data.get("format_version") != RUN_FORMAT_VERSION:
        raise ValueError(
            f"{run_json} was not written by this version of llm-lab (no \"kind\": \"{RUN_KIND}\" with "
            f"format_version {RUN_FORMAT_VERSION}), so --overwrite will not replace {out}; nothing was changed"
        )
    return data


def check_run_directory(
    out_dir: str | Path, *, resume: bool = False, overwrite: bool = False, clean_up: bool = True
) -> None:
    """May ``out_dir`` receive this run? Raise if not; change nothing but what killed writers left behind.

    A new run needs a missing or empty directory. ``overwrite`` replaces only a run this project wrote and can
    recognise: ``run.json`` with ``"kind": "llm-lab run"`` and this format version, and nothing but the files a run
    writes (``run.json``, the tokenizer files it lists, ``metrics.csv``, ``samples.txt``, ``loss.png``,
    ``checkpoints/*.pt``). Anything else is refused with the first foreign file named, and stays untouched.

    With ``clean_up`` (one process of a group does it), interrupted replacements of ``out_dir`` are finished or
    rolled back, and temporary files of killed writes (``.last.pt.PID.XXXX.tmp``) are removed, first.

    Raises:
        ValueError: contradictory options, ``out_dir`` a file, or a directory that may not be replaced.
    """
    out = Path(out_dir)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other; pick one")
    refuse_symlink(out)  # the one rule of every command that writes a directory (llm_lab.utils.dirlock)
    if clean_up:
        recover_directory(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(blocker))
    if not resume and holds_working_directory(out):
        raise ValueError(
            f"--out {out} is the current directory (or holds it); a run is written beside it and swapped in, so "
            "give a sub-directory or run from elsewhere"
        )
    if not out.is_dir():
        return
    if clean_up:
        remove_stale_temp_files(out)
        remove_stale_temp_files(out / CHECKPOINT_DIR)
    if resume:
        return  # resolve_run_config and the checkpoint check cover it
    found = unexpected_files(out, ())
    if not found:
        return
    if not (out / RUN_FILE).is_file():
        raise ValueError(
            f"--out {out} is not empty and holds no llm-lab run (found {found[0]}); choose a new or empty directory"
        )
    if not overwrite:
        raise ValueError(
            f"--out {out} already holds a run (run.json); pass --resume to continue it or --overwrite to replace it"
        )
    listed = _recognised_run(out).get("files")
    listed = {f for f in listed if isinstance(f, str)} if isinstance(listed, list) else set()
    foreign = [name for name in found if not _is_run_file(name, listed)]
    if foreign:
        raise ValueError(
            f"--out {out} holds {foreign[0]}, which llm-lab did not write; move it out (or choose another --out) "
            "before --overwrite replaces the run"
        )
