"""The Trainer on every device (the ``device`` fixture: CPU, CUDA, MPS) and in every precision it supports.

* a few steps in fp32, bf16 and fp16: the loss falls, parameters stay fp32 on the device (autocast computes in the
  low precision), and the first step's loss is the fp32 CPU one within the precision's tolerance; a precision the
  device cannot run is refused with the message saying what to use;
* resume: a run stopped at step 4 and resumed to step 8 logs the losses of the straight run, bitwise on the CPU
  (where the kernels are deterministic), within the precision's tolerance on accelerators (CUDA's attention
  backward may add in a different order from run to run);
* fp16's grad scaler skips a step whose gradients overflow (the weights stay bitwise the same, the scale halves)
  and training goes on, where without a scaler a non-finite gradient stops the run;
* ``train.compile``: on CUDA the compiled step gives the eager losses.

Each of these runs with both optimizers (``train.optimizer``: AdamW and Muon; Muon's Newton-Schulz runs in bf16 on
CUDA, fp32 on CPUs without bf16 matrix units).
"""

from __future__ import annotations

import math

import pytest
import torch

from llm_lab.core.train import Trainer
from llm_lab.core.train.device import precision_dtype
from llm_lab.core.train.metrics import read_metrics
from llm_lab.core.train.optim import OPTIMIZERS as OPTIMIZER_REGISTRY

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = tuple(OPTIMIZER_REGISTRY)  # every registered optimizer runs on every device


def _refusal(precision: str, device: torch.device) -> str | None:
    """The error a precision the device cannot run must give, or ``None`` when it runs."""
    if precision == "fp16" and device.type != "cuda":
        return rf"precision 'fp16' needs CUDA \(a grad scaler\); on {device.type} use 'bf16' or 'fp32'"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return r"this GPU has no bf16 support; use precision 'fp16' or 'fp32'"
    return None


def _losses(history: list[dict]) -> list[float]:
    return [row["train_loss"] for row in history]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_few_steps_in_each_precision(device, precision, optimizer, char_data, tiny_model, tiny_config,
                                       assert_within_tolerance):  # fmt: skip
    train, val, vocab = char_data
    config = tiny_config(max_steps=8, eval_interval=8, precision=precision, device=device.type, optimizer=optimizer)
    if (message := _refusal(precision, device)) is not None:
        with pytest.raises(ValueError, match=message):
            Trainer(tiny_model(vocab), config, train, val)
        return
    reference = Trainer(tiny_model(vocab), tiny_config(max_steps=1, optimizer=optimizer), train, val).train()  # CPU
    trainer = Trainer(tiny_model(vocab), config, train, val)
    result = trainer.train()
    assert trainer.precision == precision
    assert {(p.device.type, p.dtype) for p in trainer.model.parameters()} == {(device.type, torch.float32)}
    losses = _losses(result.history)
    assert all(math.isfinite(loss) for loss in losses) and math.isfinite(result.val_loss)
    assert losses[-1] < losses[0] - 0.1, losses
    first = reference.history[0]["train_loss"]
    assert_within_tolerance(torch.tensor(losses[0]), torch.tensor(first), precision_dtype(precision))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_resume_gives_the_losses_of_the_straight_run(device, precision, optimizer, char_data, tiny_model, tiny_config,
                                                     tmp_path, assert_within_tolerance):  # fmt: skip
    if _refusal(precision, device) is not None:
        pytest.skip(f"{precision} does not run on {device.type} (the refusal is tested above)")
    train, val, vocab = char_data

    def config(max_steps: int):
        return tiny_config(max_steps=max_steps, lr_decay_steps=8, eval_interval=4, precision=precision,
                           device=device.type, grad_accum_steps=2, optimizer=optimizer)  # fmt: skip

    Trainer(tiny_model(vocab), config(8), train, val, out_dir=tmp_path / "straight").train()
    Trainer(tiny_model(vocab), config(4), train, val, out_dir=tmp_path / "resumed").train()
    resumed = Trainer(tiny_model(vocab, seed=99), config(8), train, val, out_dir=tmp_path / "resumed")
    resumed.resume(tmp_path / "resumed")
    assert resumed.step == 4
    resumed.train()

    columns = ("train_loss", "val_loss", "grad_norm")
    rows = {}
    for name in ("straight", "resumed"):
        logged = read_metrics(tmp_path / name / "metrics.csv")
        rows[name] = torch.tensor([[float(r[c] or "nan") for c in columns] for r in logged])  # no val_loss: NaN
    assert rows["straight"].shape == rows["resumed"].shape == (8, 3)
    if device.type == "cpu":
        assert torch.equal(rows["resumed"].nan_to_num(), rows["straight"].nan_to_num())
    else:
        logged = ~rows["straight"].isnan()
        assert torch.equal(logged, ~rows["resumed"].isnan())
        assert_within_tolerance(rows["resumed"][logged], rows["straight"][logged], precision_dtype(precision))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_grad_scaler_skips_an_overflowing_step_with_fp16(device, optimizer, char_data, tiny_model, tiny_config):
    if device.type != "cuda":
        pytest.skip("fp16 and its grad scaler run on CUDA only (the refusal elsewhere is tested above)")
    train, val, vocab = char_data
    config = tiny_config(max_steps=1, precision="fp16", device="cuda", optimizer=optimizer)
    trainer = Trainer(tiny_model(vocab), config, train, val)
    state = trainer.scaler.state_dict()
    trainer.scaler.load_state_dict(state | {"scale": 2.0**40})  # loss x 2^40: the fp16 backward overflows
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    result = trainer.train()
    row = result.history[-1]
    assert math.isfinite(row["train_loss"]) and not math.isfinite(row["grad_norm"])
    assert trainer.scaler.get_scale() == 2.0**39  # backed off by half
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed in a skipped step"

    trainer.scaler.load_state_dict(trainer.scaler.state_dict() | {"scale": 2.0**8})
    trainer.config.max_steps = 2
    row = trainer.train().history[-1]
    assert math.isfinite(row["grad_norm"])
    assert any(not torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("precision", ("fp32", "bf16"))
def test_compiled_training_matches_eager(device, precision, optimizer, char_data, tiny_model, tiny_config,
                                        assert_within_tolerance):  # fmt: skip
    if device.type == "cpu":
        pytest.skip("compiling on the CPU takes minutes here: tests/core/train/test_compile.py (slow) covers it")
    if _refusal(precision, device) is not None:
        pytest.skip(f"{precision} does not run on {device.type}")
    train, val, vocab = char_data
    config = tiny_config(max_steps=4, precision=precision, device=device.type, optimizer=optimizer)
    eager = Trainer(tiny_model(vocab), config, train, val).train()
    compiled_config = tiny_config(max_steps=4, precision=precision, device=device.type, optimizer=optimizer,
                                  compile=True)  # fmt: skip
    trainer = Trainer(tiny_model(vocab), compiled_config, train, val)
    if device.type == "mps":
        with pytest.warns(RuntimeWarning, match=r"train.compile=true ignored: torch.compile is not supported on MPS"):
            compiled = trainer.train()
    else:
        compiled = trainer.train()
        assert type(trainer._train_model).__name__ == "OptimizedModule"
    losses = torch.tensor(_losses(compiled.history)), torch.tensor(_losses(eager.history))
    assert_within_tolerance(*losses, precision_dtype(precision))
