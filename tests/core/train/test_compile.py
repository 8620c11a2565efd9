"""`train.compile`: a compiled run checkpoints the plain module; a compiler failure falls back to eager."""

from __future__ import annotations

import pytest
import torch

from llm_lab.core.train import Trainer, load_checkpoint
from llm_lab.core.train import device as device_mod
from llm_lab.core.train import trainer as trainer_mod


def test_a_compiler_error_on_the_first_step_warns_and_runs_eagerly(char_data, tiny_model, tiny_config, monkeypatch):
    class Broken(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise RuntimeError("backend exploded")

    # Stands in for torch.compile returning a module whose first call fails (as inductor does without a toolchain).
    monkeypatch.setattr(trainer_mod, "maybe_compile", lambda model, device: Broken())
    train, val, vocab = char_data
    eager = Trainer(tiny_model(vocab), tiny_config(max_steps=3), train, val).train()
    trainer = Trainer(tiny_model(vocab), tiny_config(max_steps=3, compile=True), train, val)
    with pytest.warns(
        RuntimeWarning, match=r"torch.compile failed \(RuntimeError: backend exploded\); running eagerly"
    ):
        result = trainer.train()
    assert [r["train_loss"] for r in result.history] == [r["train_loss"] for r in eager.history]


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_plain_keys(char_data, tiny_model, tiny_config, tmp_path):
    if device_mod.compile_unsupported_reason(torch.device("cpu")) is not None:
        pytest.skip("torch.compile cannot run on this machine (no C++ compiler)")
    train, val, vocab = char_data
    eager = Trainer(tiny_model(vocab), tiny_config(max_steps=4), train, val).train()
    trainer = Trainer(tiny_model(vocab), tiny_config(max_steps=4, compile=True), train, val, out_dir=tmp_path)
    compiled = trainer.train()
    assert type(trainer._train_model).__name__ == "OptimizedModule"
    for a, b in zip(compiled.history, eager.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
    keys = set(load_checkpoint(tmp_path)["model"])
    assert keys == set(trainer.model.state_dict()) and not any(k.startswith("_orig_mod") for k in keys)
