"""Exact resume for real: a training process SIGKILLed mid-run and resumed with `--resume` logs bitwise the same
losses as the same run uninterrupted (CPU, one thread in every process so the float reductions are identical)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from llm_lab.core.train import load_checkpoint
from llm_lab.core.train.metrics import read_metrics

LOSS_COLUMNS = ("step", "tokens", "lr", "train_loss", "val_loss", "grad_norm")

CONFIG = {
    "model": {"context_length": 16, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.1},
    "train": {
        "batch_size": 8,
        "grad_accum_steps": 2,
        "max_steps": 300,
        "warmup_steps": 20,
        "eval_interval": 50,
        "eval_batches": 2,
        "log_interval": 1,
        "device": "cpu",
        "precision": "fp32",
        "peak_flops": 1e12,
    },
    "tokenizer": {"type": "char"},
}


def _command(config, corpus, run, *extra):
    return [sys.executable, "-m", "llm_lab", "train", "--config", str(config), "--data", str(corpus),
            "--out", str(run), "--quiet", *extra]  # fmt: skip


def _env():
    return os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _rows(path):
    return [tuple(r[c] for c in LOSS_COLUMNS) for r in read_metrics(path)]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, small_text, optimizer):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(small_text)
    config = tmp_path / "config.json"
    extra = {"optimizer": "muon", "muon_momentum_warmup_steps": 100, "schedule": "wsd"} if optimizer == "muon" else {}
    config.write_text(json.dumps(CONFIG | {"train": CONFIG["train"] | extra}))

    straight = subprocess.run(_command(config, corpus, tmp_path / "straight"), env=_env(), capture_output=True,
                              text=True, timeout=600)  # fmt: skip
    assert straight.returncode == 0, straight.stderr

    run = tmp_path / "killed"
    proc = subprocess.Popen(_command(config, corpus, run), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    metrics = run / "metrics.csv"
    try:
        # Kill between two checkpoints: after step 60 is logged (last.pt is from step 50),
        # leaving 240 steps of margin for the polling.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file():
                steps = [int(r["step"]) for r in read_metrics(metrics) if r.get("step")]
                if steps and steps[-1] >= 60:
                    break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = int(read_metrics(metrics)[-1]["step"])
    checkpoint_step = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert checkpoint_step < killed_at < 300  # rows after the checkpoint exist and must be replayed, not kept twice

    resumed = subprocess.run(_command(config, corpus, run, "--resume"), env=_env(), capture_output=True, text=True,
                             timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {checkpoint_step}" in resumed.stdout
    assert _rows(metrics) == _rows(tmp_path / "straight" / "metrics.csv")
    assert len(_rows(metrics)) == 300
