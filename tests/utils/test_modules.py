"""llm_lab/utils/modules.py: eval_mode switches dropout off for a block and always restores the mode."""

from __future__ import annotations

import pytest
import torch

from llm_lab.utils.modules import eval_mode


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_previous_mode(training):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))
    model.train(training)
    with eval_mode(model) as inside:
        assert inside is model
        assert not model.training and not model[1].training
        x = torch.ones(2, 4)
        assert torch.equal(model(x), model(x))  # dropout off: the same output twice
    assert model.training is training and model[1].training is training


def test_eval_mode_restores_the_mode_after_an_error():
    model = torch.nn.Linear(2, 2).train()
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert model.training
