"""Hard days, command by command: a full disk at every write path, two writers of one directory, a symbolic link
as --out. (SIGTERM and a kill during --overwrite: tests/cli/test_preemption.py; the mechanisms themselves:
tests/utils/test_io.py, test_dirlock.py, test_dirswap.py.)

The full disk is injected at the lowest writes the project's files go through (Python's file objects, the
descriptor ``atomic_write`` opens, and the safetensors writer transformers calls), with a budget of bytes for the
command's output folder; tests/cli/test_full_filesystem.py does the same on a real, small, full file system.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hard_days_helpers import hidden_files, make_template, write_cases
from train_helpers import _snapshot

from llm_lab.cli import main
from llm_lab.utils import io as io_module


def _cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A corpus, a config, a finished run, its package, and a Hugging Face export of a BPE package."""
    return make_template(tmp_path_factory.mktemp("hard-days"))


@pytest.fixture
def work(template, tmp_path, capsys) -> Path:
    out = tmp_path / "w"
    shutil.copytree(template, out)
    capsys.readouterr()
    return out


# ------------------------------------------------------------------------------------------------ a full disk
class _Budget:
    def __init__(self, directory: Path, room: int) -> None:
        self.directory, self.room = str(directory.resolve()), room

    def covers(self, path: str) -> bool:
        return os.path.realpath(path).startswith(self.directory + os.sep)

    def spend(self, n: int) -> None:
        if n > self.room:
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= n


class _FillingFile:
    """A file whose writes fail with ENOSPC once the budget is spent."""

    def __init__(self, f, budget: _Budget) -> None:
        self._f, self._budget = f, budget

    def write(self, data):
        self._budget.spend(len(data))
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __iter__(self):
        return iter(self._f)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


@pytest.fixture
def full_disk(monkeypatch):
    """``install(directory, room)``: writes under ``directory`` get ``room`` bytes in all, then ENOSPC."""

    def install(directory: Path, room: int) -> None:
        import safetensors
        import transformers.modeling_utils
        from safetensors.torch import save as safetensors_bytes

        budget = _Budget(directory, room)
        real_open, real_fdopen = builtins.open, os.fdopen

        def open_(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            writes = any(c in mode for c in "wax+")
            return _FillingFile(f, budget) if writes and isinstance(file, (str, os.PathLike)) and budget.covers(
                os.fspath(file)) else f  # fmt: skip

        def fdopen(fd, mode="r", *args, **kwargs):
            f = real_fdopen(fd, mode, *args, **kwargs)
            return _FillingFile(f, budget) if budget.covers(os.readlink(f"/proc/self/fd/{fd}")) else f

        real_save_file = transformers.modeling_utils.safe_save_file

        def save_file(tensors, filename, metadata=None):
            if budget.covers(str(filename)):
                try:
                    budget.spend(len(safetensors_bytes(tensors, metadata=metadata)))
                except OSError:  # the Rust writer's own wording
                    raise safetensors.SafetensorError(
                        "Error while serializing: I/O error: No space left on device (os error 28)"
                    ) from None
            return real_save_file(tensors, filename, metadata=metadata)

        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(os, "fdopen", fdopen)
        monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", save_file)
        monkeypatch.setattr(io_module, "_free_bytes", lambda path: None)  # the write itself must fail

    return install


@pytest.mark.parametrize("room", [0, 1_500, 12_000])
@pytest.mark.parametrize("case", list(write_cases(Path("w"))))
def test_a_full_disk_ends_every_write_path_in_one_line_and_keeps_the_previous_state(
    work, capsys, full_disk, case, room
):
    args, written, kept = write_cases(work)[case]
    before = _snapshot(kept) if kept is not None else None
    existed = written.exists()
    full_disk(written.parent if case != "sweep" else written, room)
    code, err = _cli(capsys, *args)
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    match = re.match(r"llm-lab: error: no space left on device writing (\S+) \((needs [^)]*)\); free some space", err)
    assert match, err
    assert Path(match.group(1)).resolve().is_relative_to(written.resolve()) or Path(match.group(1)) == written
    if kept is not None:
        assert _snapshot(kept) == before  # the previous state, intact
    if not existed and case != "sweep":
        assert not written.exists()  # nothing half-made where the new folder was to be
    assert hidden_files(work) == []  # temporaries, staging folders and locks all removed


def test_after_the_disk_has_room_again_the_same_command_works(work, capsys, full_disk, monkeypatch):
    args, written, kept = write_cases(work)["train --overwrite"]
    full_disk(written.parent, 3_000)
    assert _cli(capsys, *args)[0] == 2
    monkeypatch.undo()
    assert _cli(capsys, *args)[0] == 0
    assert (written / "checkpoints" / "last.pt").is_file()


# ---------------------------------------------------------------------------------- overwrite, interrupted early
def test_an_overwrite_interrupted_before_its_first_checkpoint_leaves_the_old_run(work, capsys, monkeypatch):
    """Ctrl+C at step 2 (the first checkpoint is at step 3): the old run is untouched and nothing else is left.
    (A SIGKILL at that moment: tests/cli/test_preemption.py.)"""
    from llm_lab.core.train.trainer import Trainer

    real_step = Trainer._train_step

    def step(self, lr):
        if self.step == 2:
            raise KeyboardInterrupt
        return real_step(self, lr)

    monkeypatch.setattr(Trainer, "_train_step", step)
    args, written, kept = write_cases(work)["train --overwrite"]
    before = _snapshot(kept)
    assert _cli(capsys, *args) == (130, "llm-lab: interrupted")
    assert _snapshot(kept) == before
    assert hidden_files(work) == []


def test_the_leftovers_of_an_overwrite_killed_early_are_cleaned_up_by_the_next_command(work, capsys):
    """What a SIGKILL before the first checkpoint leaves (the new run's folder beside the old one, a stale lock):
    the next command on the run removes both and finds the old run."""
    partial = work / ".run.tmp-99999999-0123abcd"
    shutil.copytree(work / "run" / "tokenizer", partial / "tokenizer")
    (partial / "run.json").write_text("{}")
    (work / ".run.lock").write_text("99999999 elsewhere\n")
    before = _snapshot(work / "run")
    code, err = _cli(capsys, "package", "create", work / "run", work / "pkg3")
    assert code == 0, err
    assert _snapshot(work / "run") == before
    assert hidden_files(work) == []


# ------------------------------------------------------------------------------------------------ two writers
HOLD_LOCK = """
import sys, time
from llm_lab.utils.dirlock import lock_directory
with lock_directory(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(work):
    """Another process writing work/run, work/pkg2 and work/prepared (it holds their locks until killed)."""
    processes = []
    for name in ("run", "pkg2", "prepared", "sweep"):
        p = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(work / name)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "held"
        processes.append(p)
    yield {name: p.pid for name, p in zip(("run", "pkg2", "prepared", "sweep"), processes, strict=True)}
    for p in processes:
        p.kill()
        p.wait()


@pytest.mark.parametrize("case", ["train --overwrite", "train --resume", "package create", "data prepare", "sweep"])
def test_a_second_writer_gets_one_line_naming_the_holders_pid(work, capsys, holder, case):
    args, written, _ = write_cases(work)[case]
    before = _snapshot(written) if written.exists() else None
    code, err = _cli(capsys, *args)
    assert code == 2
    assert re.fullmatch(rf"llm-lab: error: {re.escape(str(written))} is being written by another llm-lab command "
                        rf"\(pid {holder[written.name]} on \S+; lock file .*\); wait for it to finish or stop it, "
                        r"then run this again", err), err  # fmt: skip
    assert (_snapshot(written) if written.exists() else None) == before


def _start(args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llm_lab", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


@pytest.mark.slow
def test_two_real_train_overwrites_into_one_folder_one_wins_the_other_is_refused(work):
    """The second of two processes writing one run is refused while the first trains; the run stays one run."""
    args = ["train", "--config", work / "tiny.json", "--data", work / "corpus.txt", "--out", work / "run",
            "--overwrite", "--quiet", "--set", "train.max_steps=100000", "--set", "train.eval_interval=20"]  # fmt: skip
    first = _start(args)
    try:
        deadline = time.monotonic() + 120
        while not (work / ".run.lock").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        second = _start([*args[:-4], "--set", "train.max_steps=50"])
        _, err2 = second.communicate(timeout=300)
        assert first.poll() is None  # still training
        assert second.returncode == 2
        assert re.fullmatch(rf"llm-lab: error: {re.escape(str(work / 'run'))} is being written by another llm-lab "
                            rf"command \(pid {first.pid} on \S+; .*", err2.strip()), err2  # fmt: skip
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=300)
    run_json = json.loads((work / "run" / "run.json").read_text())
    checkpoint = torch.load(work / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["train_config"]["max_steps"] == run_json["train"]["max_steps"] != 50
    steps = [int(r.split(",")[0]) for r in (work / "run" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps[: checkpoint["step"]] == list(range(1, checkpoint["step"] + 1))
    assert hidden_files(work) == []


# ------------------------------------------------------------------------------------------- symbolic links
@pytest.mark.parametrize("case", ["train", "train --overwrite", "package create", "package create --force",
                                  "export-hf", "data prepare", "sweep"])  # fmt: skip
@pytest.mark.parametrize("dangling", [False, True])
def test_a_symbolic_link_as_out_is_refused_by_every_command(work, capsys, case, dangling):
    args, written, _ = write_cases(work)[case]
    destination = work / "elsewhere"
    if written.exists():
        written.rename(destination)
    elif not dangling:
        destination.mkdir()
    if dangling and destination.exists():
        shutil.rmtree(destination)
    written.symlink_to(destination)
    before = _snapshot(destination) if destination.exists() else None
    code, err = _cli(capsys, *args)
    assert code == 2
    assert re.fullmatch(rf"llm-lab: error: {re.escape(str(written))} is a symbolic link \(to "
                        rf"{re.escape(str(destination))}\); llm-lab writes only into a real directory, .*", err), err
    assert written.is_symlink() and os.readlink(written) == str(destination)
    assert (_snapshot(destination) if destination.exists() else None) == before
    assert destination.exists() is not dangling
