"""Every JSON under configs/ loads as a MiniGPTConfig and builds a model (on the meta device: no memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.utils.config_loader import load_json_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
# Every run config: a recipe's own files (its recipe.json, an RL config) are checked by the recipe's tests.
ALL_JSON = sorted(p for p in CONFIGS.rglob("*.json") if p.name not in ("recipe.json", "rl.json"))
NAMED = [
    "p1/gpt_small_subword.json",
    "p1/gpt_small_rope.json",
    "p1/gpt_small_sinusoidal.json",
    "gpt2_style.json",
    "llama_style.json",
]


def test_the_named_examples_exist():
    for name in NAMED:
        assert (CONFIGS / name).is_file(), name


@pytest.mark.parametrize("path", ALL_JSON, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_loads_and_builds(path):
    config = load_json_config(path, MiniGPTConfig)
    with torch.device("meta"):
        model = MiniGPT(config)
    assert model.num_parameters() > 0


def test_p1_posenc_configs_differ_only_in_the_encoding():
    """The positional-encoding comparison is fair only if nothing else changes."""
    base = load_json_config(CONFIGS / "p1/gpt_small_subword.json", MiniGPTConfig)
    for name, pos in (("gpt_small_rope.json", "rope"), ("gpt_small_sinusoidal.json", "sinusoidal")):
        other = load_json_config(CONFIGS / "p1" / name, MiniGPTConfig)
        assert other.pos_encoding == pos
        other.pos_encoding = base.pos_encoding
        assert other == base


def test_style_examples_have_their_family_traits():
    gpt2 = load_json_config(CONFIGS / "gpt2_style.json", MiniGPTConfig)
    assert (gpt2.pos_encoding, gpt2.norm, gpt2.mlp, gpt2.bias, gpt2.tie_embeddings) == (
        "learned",
        "layernorm",
        "gelu_tanh",
        True,
        True,
    )
    llama = load_json_config(CONFIGS / "llama_style.json", MiniGPTConfig)
    assert (llama.pos_encoding, llama.norm, llama.mlp, llama.bias, llama.attention_type) == (
        "rope",
        "rmsnorm",
        "swiglu",
        False,
        "gqa",
    )
