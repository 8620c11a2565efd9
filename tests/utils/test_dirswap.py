"""Directory replacement: a kill between any two steps leaves a complete old or new state, and recovery finds it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llm_lab.utils import dirswap
from llm_lab.utils.dirswap import (
    holds_working_directory,
    recover_directory,
    remove_stale_temp_files,
    staged_directory,
    unexpected_files,
)
from llm_lab.utils.io import atomic_write_text


def _write_state(directory, label):
    (directory / "a.txt").write_text(label)
    (directory / "sub").mkdir()
    (directory / "sub" / "b.txt").write_text(label)


def _state(directory):
    a = (directory / "a.txt").read_text()
    assert (directory / "sub" / "b.txt").read_text() == a, "a half-written state"
    return a


def _dead_pid():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_staged_directory_creates_and_replaces(tmp_path):
    target = tmp_path / "pkg"
    with staged_directory(target) as tmp:
        _write_state(tmp, "one")
    assert _state(target) == "one"
    with staged_directory(target) as tmp:
        _write_state(tmp, "two")
    assert _state(target) == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_an_exception_inside_the_block_leaves_the_old_state(tmp_path):
    target = tmp_path / "pkg"
    target.mkdir()
    _write_state(target, "old")
    with pytest.raises(RuntimeError, match="boom"), staged_directory(target) as tmp:
        _write_state(tmp, "new")
        raise RuntimeError("boom")
    assert _state(target) == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


@pytest.mark.parametrize(
    ("existing", "crash_after"),
    # replacing takes three renames (tmp -> new, old away, new in); a first write takes two (tmp -> new, new in)
    [(True, 0), (True, 1), (True, 2), (False, 0), (False, 1)],
)
def test_a_kill_between_any_two_renames_is_recovered(tmp_path, monkeypatch, existing, crash_after):
    """Simulate a kill after the n-th rename of the swap; recovery (as if the writer were dead) leaves one
    complete state at the path: the new one, since the new state was complete before the first rename."""
    target = tmp_path / "pkg"
    if existing:
        target.mkdir()
        _write_state(target, "old")
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        if len(calls) == crash_after:
            raise KeyboardInterrupt("killed")
        calls.append((src, dst))
        real_replace(src, dst)

    monkeypatch.setattr(dirswap.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt), staged_directory(target) as tmp:
        _write_state(tmp, "new")
    monkeypatch.setattr(dirswap.os, "replace", real_replace)
    # Whatever the kill left, the path holds a complete state or (first write killed early) nothing at all.
    if target.exists():
        assert _state(target) in {"old", "new"}
    monkeypatch.setattr(dirswap, "_pid_alive", lambda pid: False)
    recover_directory(target)
    if crash_after == 0 and existing:
        # killed before the staging directory was marked complete: recovery deletes it, the old state stays
        assert _state(target) == "old"
    elif crash_after == 0:
        assert not target.exists()
    else:
        assert _state(target) == "new"
    assert [p.name for p in tmp_path.iterdir()] == (["pkg"] if target.exists() else [])


def test_recovery_restores_the_old_state_when_only_it_survived(tmp_path):
    pid = _dead_pid()
    old = tmp_path / f".pkg.old-{pid}-0123abcd"
    old.mkdir()
    _write_state(old, "old")
    assert recover_directory(tmp_path / "pkg") == ["restored pkg from an interrupted replacement"]
    assert _state(tmp_path / "pkg") == "old"


def test_recovery_deletes_an_unfinished_write_and_finishes_a_complete_one(tmp_path):
    pid = _dead_pid()
    target = tmp_path / "pkg"
    target.mkdir()
    _write_state(target, "old")
    unfinished = tmp_path / f".pkg.tmp-{pid}-00000001"
    unfinished.mkdir()
    (unfinished / "a.txt").write_text("half")
    complete = tmp_path / f".pkg.new-{pid}-00000002"
    complete.mkdir()
    _write_state(complete, "new")
    actions = recover_directory(target)
    assert actions == [
        f"removed .pkg.tmp-{pid}-00000001 (an unfinished write)",
        "finished an interrupted replacement of pkg",
    ]
    assert _state(target) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_recovery_leaves_a_live_writer_and_foreign_names_alone(tmp_path):
    live = tmp_path / f".pkg.tmp-{os.getpid()}-0123abcd"
    live.mkdir()
    foreign = [tmp_path / ".pkg.tmp-notours", tmp_path / ".pkg.old", tmp_path / "pkg.old-1-0123abcd"]
    for path in foreign:
        path.mkdir()
    assert recover_directory(tmp_path / "pkg") == []
    assert live.is_dir() and all(p.is_dir() for p in foreign)


def test_remove_stale_temp_files_takes_only_dead_writers_files(tmp_path):
    pid = _dead_pid()
    stale = tmp_path / f".last.pt.{pid}.k2j_x9.tmp"
    stale.write_bytes(b"x" * 100)
    live = tmp_path / f".last.pt.{os.getpid()}.abc.tmp"
    live.write_bytes(b"x")
    users = tmp_path / ".notes.tmp"
    users.write_text("mine")
    (tmp_path / f".run.tmp-{pid}-deadbeef").mkdir()
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(removed) == sorted([stale.name, "run"])
    assert live.exists() and users.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, users.name])


def test_atomic_write_names_its_temporary_file_with_the_writer_pid(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    atomic_write_text(tmp_path / "f.txt", "x")
    assert seen and seen[0].startswith(f".f.txt.{os.getpid()}.") and seen[0].endswith(".tmp")


def test_unexpected_files_lists_what_the_project_did_not_write(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best_val.pt").write_bytes(b"")
    (tmp_path / "thesis.tex").write_text("years of work")
    (tmp_path / "link").symlink_to(tmp_path / "checkpoints")
    assert unexpected_files(tmp_path, ["config.json", "checkpoints/best_val.pt"]) == ["link", "thesis.tex"]


def test_holds_working_directory(tmp_path, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a")
    assert holds_working_directory(".") and holds_working_directory(tmp_path) and holds_working_directory("..")
    assert not holds_working_directory("b") and not holds_working_directory(tmp_path / "c")
