"""DDP on CUDA with nccl: ``torchrun -m llm_lab train`` with 1 process, and with 2 where there are 2 GPUs.

The CUDA counterpart of ``test_distributed.py`` (gloo on the CPU), compared the same way:

* 1 process: ``torchrun --nproc_per_node=1`` gives the validation-loss curve of a plain ``python -m llm_lab train``
  (one process needs no process group, so the two runs are the same computation; 1e-3 leaves room for CUDA
  kernels that add in a different order from run to run, as the DDP/FSDP comparison on the CPU does);
* 2 processes (nccl, one GPU each) at batch 2 x 2 accumulation steps against one process at batch 8: the same
  global batch over different windows, so the curves agree statistically; the gloo test's measured spread sets
  the same allowance of 0.1 nats, against a fall of about 1.5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from llm_lab.core.train.metrics import read_metrics

pytestmark = [
    pytest.mark.device,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine"),
]

TRAIN = {
    "max_steps": 60, "lr_decay_steps": 60, "warmup_steps": 5, "lr": 3e-3, "min_lr": 3e-4, "eval_interval": 20,
    "eval_batches": 100, "log_interval": 5, "device": "cuda", "precision": "fp32", "peak_flops": 1e12,
}  # fmt: skip
MODEL = {"context_length": 16, "n_layer": 2, "n_head": 2, "n_embd": 32}


def _train(tmp_path, name: str, corpus, nproc: int | None, batch_size: int, accum: int):
    """One training run: plain ``python`` when ``nproc`` is None, else ``torchrun --nproc_per_node=nproc``."""
    config = tmp_path / f"{name}.json"
    train = TRAIN | {"batch_size": batch_size, "grad_accum_steps": accum}
    config.write_text(json.dumps({"model": MODEL, "train": train, "tokenizer": {"type": "char"}}))
    out = tmp_path / name
    launcher = [sys.executable] if nproc is None else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]  # fmt: skip
    args = ["-m", "llm_lab", "train", "--config", str(config), "--data", str(corpus), "--out", str(out), "--quiet"]
    proc = subprocess.run(launcher + args, env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc


def _val_losses(run) -> dict[int, float]:
    return {int(r["step"]): float(r["val_loss"]) for r in read_metrics(run / "metrics.csv") if r["val_loss"]}


@pytest.fixture
def corpus(tmp_path, small_text):
    path = tmp_path / "corpus.txt"
    path.write_text(small_text)
    return path


def test_torchrun_one_process_on_cuda_matches_a_plain_run(tmp_path, corpus):
    plain, _ = _train(tmp_path, "plain", corpus, None, 8, 1)
    launched, _ = _train(tmp_path, "torchrun1", corpus, 1, 8, 1)
    one, two = _val_losses(plain), _val_losses(launched)
    assert one.keys() == two.keys() == {20, 40, 60}
    assert one[60] < one[20] - 0.3  # it really trained
    for step in one:
        assert abs(one[step] - two[step]) < 1e-3, (step, one[step], two[step])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="a 2-process nccl run needs 2 GPUs; this machine has fewer")
def test_ddp_nccl_on_two_gpus_matches_one_process_at_the_same_global_batch(tmp_path, corpus):
    single, _ = _train(tmp_path, "single", corpus, None, 8, 1)
    ddp, proc = _train(tmp_path, "ddp", corpus, 2, 2, 2)
    rows = read_metrics(ddp / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(5, 61, 5))  # rank 0 alone logs
    assert int(rows[-1]["tokens"]) == 60 * 2 * 2 * 2 * 16
    assert "x 2 processes" in proc.stdout
    one, two = _val_losses(single), _val_losses(ddp)
    assert one.keys() == two.keys() == {20, 40, 60}
    assert one[60] < one[20] - 0.3
    for step in one:
        assert abs(one[step] - two[step]) < 0.1, (step, one[step], two[step])
