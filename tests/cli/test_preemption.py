"""Real signals at real processes: SIGTERM (preemption) to `train` and `sweep`, and `train --overwrite` killed
before the new run's first checkpoint. One thread in every process, so the float reductions repeat exactly.

Slow (each starts several interpreters); the default suite covers the same with a real SIGTERM in-process
(tests/core/train/test_trainer.py, tests/utils/test_signals.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llm_lab.core.train.metrics import read_metrics

LOSS_COLUMNS = ("step", "tokens", "lr", "train_loss", "val_loss", "grad_norm")
CONFIG = {
    "model": {"context_length": 16, "n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.1},
    "train": {"batch_size": 4, "max_steps": 300, "warmup_steps": 10, "eval_interval": 100, "eval_batches": 2,
              "log_interval": 1, "device": "cpu", "precision": "fp32", "peak_flops": 1e12},
    "tokenizer": {"type": "char"},
}  # fmt: skip
TEXT = "\n".join(["the quick brown fox jumps over the lazy dog.", "to be, or not to be: that is the question."] * 100)


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    (tmp_path / "corpus.txt").write_text(TEXT)
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    return tmp_path / "config.json", tmp_path / "corpus.txt"


def _env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _train_args(files, out, *extra) -> list[str]:
    config, corpus = files
    return ["train", "--config", str(config), "--data", str(corpus), "--out", str(out), "--threads", "1", *extra]


def _run(args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm_lab", *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def _signal_at_step(args, step: int, sig: int) -> tuple[int, str]:
    """Start ``llm-lab ARGS`` (printing a line per step), send ``sig`` once it has printed ``step``; returns the exit
    code and stderr."""
    process = subprocess.Popen([sys.executable, "-m", "llm_lab", *args], env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        for line in process.stdout:
            match = re.match(r"step (\d+)/", line)
            if match and int(match.group(1)) >= step:
                process.send_signal(sig)
                break
        _, err = process.communicate(timeout=300)
    finally:
        process.kill()
        process.wait()
    return process.returncode, err


def _loss_rows(run: Path) -> list[tuple[str, ...]]:
    return [tuple(r[c] for c in LOSS_COLUMNS) for r in read_metrics(run / "metrics.csv")]


def _hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.slow
def test_sigterm_finishes_the_step_checkpoints_it_exits_143_and_resume_is_exact(tmp_path, files):
    straight = _run(_train_args(files, tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr

    run = tmp_path / "preempted"
    code, err = _signal_at_step(_train_args(files, run), 30, signal.SIGTERM)
    assert code == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    match = re.fullmatch(rf"llm-lab: stopped by SIGTERM after step (\d+)/300: checkpoint "
                         rf"{re.escape(str(run / 'checkpoints' / 'last.pt'))} written; resume the run to continue "
                         rf"\(llm-lab train --resume --out {re.escape(str(run))}\)", lines[0])  # fmt: skip
    assert match, lines[0]
    stopped_at = int(match.group(1))
    assert 30 <= stopped_at < 100  # before the first evaluation: the checkpoint is the one SIGTERM wrote
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == stopped_at
    assert int(read_metrics(run / "metrics.csv")[-1]["step"]) == stopped_at  # the step it was in, finished

    resumed = _run(_train_args(files, run, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert _loss_rows(run) == _loss_rows(tmp_path / "straight")  # bitwise: the same strings of the same floats
    assert _hidden(tmp_path) == []


@pytest.mark.slow
def test_overwrite_killed_before_the_new_runs_first_checkpoint_leaves_the_old_run(tmp_path, files):
    run = tmp_path / "run"
    first = _run(_train_args(files, run, "--set", "train.max_steps=100"))
    assert first.returncode == 0, first.stderr
    before = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}

    code, _ = _signal_at_step(_train_args(files, run, "--overwrite", "--set", "train.lr=0.003"), 20, signal.SIGKILL)
    assert code == -signal.SIGKILL
    left = _hidden(tmp_path)  # the new run's unfinished folder and the dead writer's lock
    assert len(left) == 2 and left[0] == ".run.lock" and re.fullmatch(r"\.run\.tmp-\d+-[0-9a-f]{8}", left[1]), left
    assert {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    # The next command cleans up after the killed one and finds the old run: it continues where it stopped.
    again = _run(_train_args(files, run, "--resume", "--set", "train.max_steps=110"))
    assert again.returncode == 0, again.stderr
    assert "resuming at step 100" in again.stdout
    assert _hidden(tmp_path) == []


@pytest.mark.slow
def test_overwrite_stopped_by_sigterm_after_its_first_steps_replaces_the_old_run_with_a_resumable_one(tmp_path, files):
    run = tmp_path / "run"
    assert _run(_train_args(files, run, "--set", "train.max_steps=100")).returncode == 0
    code, err = _signal_at_step(_train_args(files, run, "--overwrite", "--set", "train.lr=0.003"), 20, signal.SIGTERM)
    assert code == 143, err
    checkpoint = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["train_config"]["lr"] == 0.003 and 20 <= checkpoint["step"] < 100
    assert json.loads((run / "run.json").read_text())["train"]["lr"] == 0.003
    assert _hidden(tmp_path) == []


SWEEP_CONFIG = CONFIG | {"train": CONFIG["train"] | {"max_steps": 1500, "eval_interval": 1000, "log_interval": 50}}


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.slow
def test_sigterm_to_a_sweep_reaches_its_runs_which_checkpoint_and_the_sweep_resumes(tmp_path, files, jobs):
    config, corpus = files
    config.write_text(json.dumps(SWEEP_CONFIG))
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "llm_lab", "sweep", "--config", str(config), "--data", str(corpus), "--out",
            str(out), "--grid", "model.mlp=gelu,swiglu", "--jobs", str(jobs), "--threads", str(jobs), "--quiet"]
    process = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Every running run is in its training loop (a run is swapped into runs/ at its first checkpoint: look beside)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            started = list((out / "runs").glob(".*.tmp-*/runtime.json")) if (out / "runs").is_dir() else []
            if len(started) == jobs:
                break
            time.sleep(0.05)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)  # to the sweep alone: it passes the signal on to its runs
        _, err = process.communicate(timeout=300)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 143, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and re.fullmatch(
        rf"llm-lab: sweep stopped by SIGTERM: 0 of 2 runs finished, the running ones saved a checkpoint; run the same "
        rf"command again to continue \(sweep folder {re.escape(str(out))}\)", lines[0]), err  # fmt: skip
    checkpoints = sorted(p.parent.parent.name for p in (out / "runs").glob("*/checkpoints/last.pt"))
    assert len(checkpoints) == jobs  # each running run kept the step it was in
    for name in checkpoints:
        step = torch.load(out / "runs" / name / "checkpoints" / "last.pt", weights_only=True)["step"]
        assert 0 < step < 1000
        assert f"stopped by SIGTERM after step {step}/1500" in (out / "logs" / f"{name}.log").read_text()
    assert not (out / "finished").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []

    again = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert sorted(p.stem for p in (out / "finished").glob("*.json")) == ["mlp-gelu-seed1337", "mlp-swiglu-seed1337"]
    for name in checkpoints:
        assert f"=== resuming {name} ===" in (out / "logs" / f"{name}.log").read_text()
