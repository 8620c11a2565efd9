"""Token ids are range-checked once, where the data enters the trainer, not by the model on every training step."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from llm_lab.core.data import LanguageModelingDataset
from llm_lab.core.model import inputs as inputs_mod
from llm_lab.core.train import Trainer

# The ops through which a tensor value reaches Python: each one waits for the device (a host-device sync on a GPU).
HOST_READS = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero"}


def host_reads(fn) -> list[str]:
    """Run ``fn()`` under the profiler; return the names of the host reads it made, in order."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [event.name for event in prof.events() if event.name in HOST_READS]


def test_the_training_forward_and_backward_read_nothing_back(device, char_data, tiny_model, tiny_config):
    """The step's forward + backward never waits for the device; the public ``model(x)`` does (its range check),
    which shows that the probe sees such a read."""
    train, val, vocab = char_data
    trainer = Trainer(tiny_model(vocab), tiny_config(device=device.type), train, val)
    x, y = train.get_batch(4, torch.Generator().manual_seed(0), device=device)
    assert host_reads(lambda: trainer._forward_loss(x, y).backward()) == []
    assert "aten::is_nonzero" in host_reads(lambda: trainer.model(x))


def test_training_steps_run_no_range_check_and_the_public_entry_does(char_data, tiny_model, tiny_config, monkeypatch):
    calls = []
    check = inputs_mod.check_ids_in_vocab

    def counted(ids, vocab_size):
        calls.append(tuple(ids.shape))
        check(ids, vocab_size)

    monkeypatch.setattr(inputs_mod, "check_ids_in_vocab", counted)
    train, _, vocab = char_data
    trainer = Trainer(tiny_model(vocab), tiny_config(max_steps=3, batch_size=4), train, None)
    assert trainer.train().step == 3
    assert calls == []
    trainer.model(train.get_batch(2, torch.Generator())[0])
    assert calls == [(2, 16)]


def test_an_out_of_range_id_in_the_data_is_refused_when_the_trainer_is_built(tiny_model, tiny_config):
    ok = LanguageModelingDataset(list(range(40)) * 2, 16)
    bad = LanguageModelingDataset(list(range(41)) * 2, 16)  # id 40 in a vocabulary of 40
    message = r"the token stream holds id 40, outside the model's vocabulary: ids must lie in \[0, vocab_size=40\)"
    with pytest.raises(ValueError, match=r"^train_data: " + message):
        Trainer(tiny_model(40), tiny_config(), bad, ok)
    with pytest.raises(ValueError, match=r"^val_data: " + message):
        Trainer(tiny_model(40), tiny_config(), ok, bad)
    Trainer(tiny_model(41), tiny_config(max_steps=1), bad, bad).train()  # the same data fits a vocabulary of 41


def test_data_that_cannot_check_itself_keeps_the_models_check(tiny_model, tiny_config):
    """Any object with ``get_batch`` may feed the trainer; without ``check_vocab_size`` every step is checked."""

    class Batches:
        context_length = 16

        def get_batch(self, batch_size, generator, device=None):
            x = torch.full((batch_size, 16), 40)
            return x, x

    trainer = Trainer(tiny_model(40), tiny_config(max_steps=1), Batches(), None)
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=40\); got values in \[40, 40\]"):
        trainer.train()
