"""A sweep SIGKILLed mid-run and started again ends with the same results as one never interrupted: finished runs
are kept as they were, the interrupted run continues from its checkpoint with the trainer's exact resume (one thread
in every process, so the float reductions are identical)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_lab.core.train.metrics import read_metrics
from llm_lab.experiments.tables import read_csv

CONFIG = {
    "model": {"context_length": 16, "n_layer": 1, "n_head": 2, "n_embd": 32, "dropout": 0.1},
    "train": {
        "batch_size": 8, "max_steps": 150, "warmup_steps": 10, "eval_interval": 25, "eval_batches": 2,
        "log_interval": 5, "device": "cpu", "precision": "fp32", "peak_flops": 1e12, "seed": 3,
    },
    "tokenizer": {"type": "char"},
}  # fmt: skip
TIMING = ("tokens_per_second", "wall_time_s")


def _command(config, corpus, out):
    return [sys.executable, "-m", "llm_lab", "sweep", "--config", str(config), "--data", str(corpus), "--out",
            str(out), "--grid", "model.mlp=gelu,swiglu", "--seeds", "2", "--threads", "1", "--quiet"]  # fmt: skip


def _env():
    return os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _deterministic(path):
    return [{k: v for k, v in row.items() if not k.startswith(TIMING)} for row in read_csv(path)]


def _interrupted_run(out):
    """A run with a checkpoint but not finished, once another run has finished: the moment to kill."""
    finished = {p.stem for p in (out / "finished").glob("*.json")} if (out / "finished").is_dir() else set()
    if not finished or not (out / "runs").is_dir():
        return None
    for run in (out / "runs").iterdir():
        if run.name not in finished and (run / "checkpoints" / "last.pt").is_file():
            return run.name
    return None


@pytest.mark.slow
def test_sigkilled_sweep_resumes_to_the_same_results(tmp_path, small_text):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(small_text)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))

    straight = subprocess.run(_command(config, corpus, tmp_path / "straight"), env=_env(), capture_output=True,
                              text=True, timeout=900)  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-2000:]

    out = tmp_path / "killed"
    process = subprocess.Popen(_command(config, corpus, out), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    victim = None
    deadline = time.monotonic() + 600
    while victim is None and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        victim = _interrupted_run(out)
    assert victim is not None, "the sweep ended before a run could be interrupted"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished_before = {p.stem: (out / "runs" / p.stem / "metrics.csv").read_bytes()
                       for p in (out / "finished").glob("*.json")}  # fmt: skip
    steps_at_kill = int(read_metrics(out / "runs" / victim / "metrics.csv")[-1]["step"])
    assert 0 < steps_at_kill < 150

    again = subprocess.run(_command(config, corpus, out), env=_env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "=== resuming " + victim in (out / "logs" / f"{victim}.log").read_text()
    for name, metrics in finished_before.items():  # finished runs were not trained again
        assert (out / "runs" / name / "metrics.csv").read_bytes() == metrics
    assert _deterministic(out / "results.csv") == _deterministic(tmp_path / "straight" / "results.csv")
    loss_columns = ("setting", "seed", "run", "steps", "tokens", "train_loss", "val_loss", "best_val_loss")
    resumed = [{k: r[k] for k in loss_columns} for r in read_csv(out / "runs.csv")]
    assert resumed == [{k: r[k] for k in loss_columns} for r in read_csv(tmp_path / "straight" / "runs.csv")]


def _children(pid):
    try:
        return (Path(f"/proc/{pid}/task/{pid}/children")).read_text().split()
    except OSError:
        return []


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the workers through /proc (Linux)")
@pytest.mark.parametrize("moment", ["workers starting", "runs training"])
def test_ctrl_c_on_a_two_job_sweep_is_one_line_then_it_resumes(tmp_path, small_text, moment):
    """Ctrl+C from a terminal reaches the whole process group: the sweep and both workers, while the workers still
    import torch or while they train. One line, exit 130, no traceback or resource_tracker warning; a rerun ends."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(small_text)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    out = tmp_path / "sweep"
    command = [*_command(config, corpus, out)[:-3], "--jobs", "2", "--threads", "2", "--quiet"]
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 600
    logs = out / "logs"
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
        started = len(list(logs.glob("*.log"))) if logs.is_dir() else 0
        if moment == "workers starting" and len(_children(process.pid)) >= 2 and started == 0:
            break
        if moment == "runs training" and any((out / "runs").glob("*/checkpoints/last.pt")):
            break
    assert process.poll() is None, "the sweep ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert (process.returncode, stderr) == (130, "llm-lab: interrupted\n")

    again = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(list((out / "finished").glob("*.json"))) == 4
