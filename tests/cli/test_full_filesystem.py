"""A real full file system: every write path on a small tmpfs filled to a few free bytes, so ENOSPC comes from the
kernel (through Python's writes, torch.save and the Rust safetensors writer), for a sweep of free sizes.

Mounting needs root (or CAP_SYS_ADMIN); where the test cannot mount, only this variant is skipped, loudly: the
injected full disk of tests/cli/test_hard_days.py covers the same paths on every machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from hard_days_helpers import hidden_files, make_template, write_cases
from train_helpers import _snapshot

from llm_lab.cli import main
from llm_lab.core.train import load_checkpoint
from llm_lab.utils.dirlock import lock_path

SIZES = [2_000, 20_000, 200_000]  # free bytes left on the file system


@pytest.fixture(scope="module")
def small_fs(tmp_path_factory):
    """A 4 MiB tmpfs, mounted for the module."""
    point = tmp_path_factory.mktemp("small-fs")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(point)], capture_output=True,
                            text=True)  # fmt: skip
    if result.returncode != 0:
        reason = f"cannot mount a tmpfs here ({result.stderr.strip() or 'mount failed'}): the real-ENOSPC variant is " \
                 "skipped; tests/cli/test_hard_days.py injects ENOSPC instead"  # fmt: skip
        warnings.warn(reason, stacklevel=1)
        pytest.skip(reason)
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return make_template(tmp_path_factory.mktemp("hard-days-fs"))


def _fill(point: Path, free: int) -> None:
    """Leave ``free`` bytes free on the file system of ``point`` (rounded down to its pages)."""
    filler = point / "filler"
    with open(filler, "wb") as f:
        room = shutil.disk_usage(point).free - free
        if room > 0:
            os.posix_fallocate(f.fileno(), 0, room)


@pytest.fixture
def work(small_fs, template, capsys):
    for entry in small_fs.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    out = small_fs / "w"
    shutil.copytree(template, out)
    capsys.readouterr()
    yield out
    (small_fs / "filler").unlink(missing_ok=True)


def _check(code: int, err: str, written: Path, kept: Path | None, before, existed: bool, work: Path) -> None:
    """Either the command fitted (exit 0) or it ended in one line naming the path, with the previous state intact."""
    assert code in (0, 2), err
    if code == 2:
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        match = re.match(r"llm-lab: error: no space left on device writing (\S+) \((needs [^)]*)\)", err.strip())
        assert match, err
        named = Path(match.group(1))
        assert named == written or written in named.parents or named == lock_path(written), err
        if kept is not None:
            assert _snapshot(kept) == before
        if not existed and written.name == "new":  # a new run: nothing, or one that reached a checkpoint
            assert not written.exists() or load_checkpoint(written, training_state=True)["step"] > 0
        elif not existed and written.name != "sweep":
            assert not written.exists()
    assert hidden_files(work) == []


@pytest.mark.parametrize("free", SIZES)
@pytest.mark.parametrize("case", list(write_cases(Path("w"))))
def test_every_write_path_on_a_really_full_file_system(work, capsys, case, free):
    args, written, kept = write_cases(work)[case]
    before = _snapshot(kept) if kept is not None else None
    existed = written.exists()
    _fill(work.parent, free)
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    _check(code, err, written, kept, before, existed, work)
    if free == SIZES[0]:
        assert code == 2, "nothing the project writes fits in 2 kB"


@pytest.mark.slow
@pytest.mark.parametrize("free", SIZES)
@pytest.mark.parametrize("case", ["train --overwrite", "package create", "export-hf", "data prepare"])
def test_a_real_process_on_a_really_full_file_system(work, case, free):
    args, written, kept = write_cases(work)[case]
    before = _snapshot(kept) if kept is not None else None
    existed = written.exists()
    _fill(work.parent, free)
    result = subprocess.run([sys.executable, "-m", "llm_lab", *map(str, args)], capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    _check(result.returncode, result.stderr, written, kept, before, existed, work)
    if free == SIZES[0]:
        assert result.returncode == 2
