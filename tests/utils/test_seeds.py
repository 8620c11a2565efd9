"""The one range of seeds: 0 to 2**63 - 1, refused by name past it (torch's own error names no flag)."""

from __future__ import annotations

import pytest
import torch

from llm_lab.core.train import TrainerConfig
from llm_lab.utils.seeds import MAX_SEED, check_seed


def test_the_range_is_what_a_torch_generator_takes_with_room_above():
    assert check_seed(0) == 0 and check_seed(MAX_SEED) == MAX_SEED
    torch.Generator().manual_seed(MAX_SEED + 1_000_003)  # a seed plus an offset (a rank) still fits
    with pytest.raises(ValueError, match="^Overflow when unpacking long long$"):
        torch.Generator().manual_seed(2**70)  # names no flag: what the check keeps from every caller


@pytest.mark.parametrize("value", [-1, 2**63, 10**24, 1e24, "7", True, None])
def test_outside_the_range_names_the_flag(value):
    with pytest.raises(ValueError, match=rf"^--seed must be an integer from 0 to 2\*\*63 - 1 \({MAX_SEED}\), got "):
        check_seed(value, "--seed")


def test_train_seed_is_checked_by_the_config():
    with pytest.raises(ValueError, match=r"^seed must be an integer from 0 to 2\*\*63 - 1 .*, got 11805916207174113"):
        TrainerConfig(seed=2**70)
