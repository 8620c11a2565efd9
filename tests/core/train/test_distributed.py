"""Multi-process training on CPU: `torchrun --nproc_per_node=2 -m llm_lab train` with gloo, DDP and FSDP.

Tolerances: two processes with batch 2 x 2 accumulation micro-steps each see different (disjoint) windows
than one process with batch 8, so their losses agree statistically, not bitwise. Both start from the same init
(same seed) and are scored on the whole validation split; their validation losses after 20/40/60 steps differed
by 0.000/0.033/0.026 nats here, against a fall of about 1.5 nats (single-process runs with other seeds spread
0.17 at step 60), so the test allows 0.1. DDP and FSDP see the same data and differ only in the order of float
reductions: they agree within 1e-3 (measured: 1e-7). A 2-process FSDP run stopped at step 40 and resumed to 60
logs bitwise the same losses as the straight 60-step run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from llm_lab.core.train import load_checkpoint
from llm_lab.core.train.metrics import read_metrics

TRAIN = {
    "max_steps": 60,
    "lr_decay_steps": 60,  # the schedule stays the same when a shorter run is resumed up to 60 steps
    "warmup_steps": 5,
    "lr": 3e-3,
    "min_lr": 3e-4,
    "eval_interval": 20,
    # Every validation window (49 of them, in 25 batches of 2 per process or 7 of 8 for one process), so all runs
    # score the same text. 25 is odd: DDP splits the batches 13 + 12, FSDP runs all 25 on each process.
    "eval_batches": 100,
    "log_interval": 5,
    "device": "cpu",
    "precision": "fp32",
    "peak_flops": 1e12,
}
MODEL = {"context_length": 16, "n_layer": 2, "n_head": 2, "n_embd": 32}


def _run(tmp_path, name, corpus, nproc, batch_size, accum, *extra):
    config = tmp_path / f"{name}.json"
    config.write_text(
        json.dumps(
            {
                "model": MODEL,
                "train": TRAIN | {"batch_size": batch_size, "grad_accum_steps": accum},
                "tokenizer": {"type": "char"},
            }
        )
    )
    out = tmp_path / name
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    args = ["-m", "llm_lab", "train", "--config", str(config), "--data", str(corpus), "--out", str(out), "--quiet"]
    command = (launcher if nproc > 1 else [sys.executable]) + args + list(extra)
    proc = subprocess.run(command, env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc


def _val_losses(run):
    return {int(r["step"]): float(r["val_loss"]) for r in read_metrics(run / "metrics.csv") if r["val_loss"]}


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process_at_the_same_global_batch(tmp_path, small_text):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(small_text)
    single, _ = _run(tmp_path, "single", corpus, 1, 8, 1)
    ddp, proc = _run(tmp_path, "ddp", corpus, 2, 2, 2)  # no_sync on the first micro-step of each step

    rows = read_metrics(ddp / "metrics.csv")
    # Rank 0 alone logs: one row per logged step, and tokens count both processes.
    assert [int(r["step"]) for r in rows] == list(range(5, 61, 5))
    assert int(rows[-1]["tokens"]) == 60 * 2 * 2 * 2 * 16
    assert proc.stdout.count("done: step 60") == 1
    assert "x 2 processes" in proc.stdout
    ckpt = load_checkpoint(ddp / "checkpoints" / "last.pt", training_state=True)
    assert ckpt["rng"]["world_size"] == 2 and len(ckpt["data_state"]["generators"]) == 2
    # The two ranks drew different batches (disjoint shards, generators seeded by rank).
    assert not ckpt["data_state"]["generators"][0].equal(ckpt["data_state"]["generators"][1])

    one, two = _val_losses(single), _val_losses(ddp)
    assert one.keys() == two.keys() == {20, 40, 60}
    assert one[60] < one[20] - 0.3  # both really trained
    for step in one:
        assert abs(one[step] - two[step]) < 0.1, (step, one[step], two[step])

    fsdp, _ = _run(tmp_path, "fsdp", corpus, 2, 2, 2, "--set", "train.distributed=fsdp")
    three = _val_losses(fsdp)
    for step in two:
        assert abs(two[step] - three[step]) < 1e-3, (step, two[step], three[step])
    # The FSDP checkpoint holds full (unsharded) tensors, loadable like any other.
    full = load_checkpoint(fsdp / "checkpoints" / "last.pt")["model"]
    assert full.keys() == load_checkpoint(ddp / "checkpoints" / "last.pt")["model"].keys()
    assert all(full[k].shape == v.shape for k, v in ckpt["model"].items())

    # Exact resume with several processes (each one's RNG and batch-generator states are in the checkpoint), on the
    # FSDP path, whose checkpoints are gathered to full tensors and resharded on load.
    half, _ = _run(tmp_path, "fsdp_resumed", corpus, 2, 2, 2, "--set", "train.distributed=fsdp",
                   "--set", "train.max_steps=40")  # fmt: skip
    _, resumed = _run(tmp_path, "fsdp_resumed", corpus, 2, 2, 2, "--set", "train.distributed=fsdp",
                      "--set", "train.max_steps=60", "--resume")  # fmt: skip
    assert "resuming at step 40" in resumed.stdout
    columns = ("step", "tokens", "lr", "train_loss", "val_loss", "grad_norm")
    rows_straight = [[r[c] for c in columns] for r in read_metrics(fsdp / "metrics.csv")]
    assert [[r[c] for c in columns] for r in read_metrics(half / "metrics.csv")] == rows_straight


@pytest.mark.slow
def test_muon_under_ddp_matches_one_process_and_fsdp_refuses_it_in_one_line(tmp_path, small_text):
    """Muon's update is computed from the all-reduced gradient on every process, so DDP follows the single-process
    run as closely as AdamW does (same tolerance as above)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(small_text)
    muon = ("--set", "train.optimizer=muon", "--set", "train.muon_lr=0.02")
    single, _ = _run(tmp_path, "single", corpus, 1, 8, 1, *muon)
    ddp, _ = _run(tmp_path, "ddp", corpus, 2, 2, 2, *muon)
    one, two = _val_losses(single), _val_losses(ddp)
    assert one[60] < one[20] - 0.3
    for step in one:
        assert abs(one[step] - two[step]) < 0.1, (step, one[step], two[step])
    config = tmp_path / "single.json"
    proc = subprocess.run(
        [sys.executable, "-m", "llm_lab", "train", "--config", str(config), "--data", str(corpus), "--out",
         str(tmp_path / "fsdp"), *muon, "--set", "train.distributed=fsdp"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "optimizer='muon' does not run under distributed='fsdp'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
