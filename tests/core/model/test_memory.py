"""Tests for llm_lab/core/model/memory.py: the parameter count from a config, the memory estimate, the refusal."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from model_variants import PAIRWISE, tiny_config, variant_id

from llm_lab.core.model import memory
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.model.memory import (
    PYTHON_BYTES_PER_LAYER,
    MemoryEstimate,
    check_memory,
    count_parameters,
    estimate_memory,
    format_bytes,
    machine_memory,
)


@pytest.mark.parametrize("variant", PAIRWISE, ids=variant_id)
@pytest.mark.parametrize("tied", [True, False])
def test_count_parameters_equals_the_built_model(variant, tied):
    config = tiny_config(*variant, tie_embeddings=tied)
    assert count_parameters(config) == MiniGPT(config).num_parameters()


def test_weights_state_and_activations_by_the_formulas():
    """A 2-layer, 32-wide MHA model, vocab 37, T=24, GELU with H=48 (learned positions, LayerNorm with bias)."""
    config = tiny_config("learned", "layernorm", "gelu", "mha")
    P = MiniGPT(config).num_parameters()
    weights = 4 * P + 2 * PYTHON_BYTES_PER_LAYER  # no buffers in this variant
    assert estimate_memory(config) == MemoryEstimate(P, weights, 0, 0)
    # training: gradients + two AdamW moments = 12 bytes per parameter; activations
    # 4 B T (L (10 C + 4 H + h T) + 2 C + 3 V) = 4 * 3 * 24 * (2 * (320 + 192 + 96) + 64 + 111)
    trained = estimate_memory(config, batch_size=3, training=True)
    assert trained == MemoryEstimate(P, weights, 12 * P, 4 * 3 * 24 * (2 * (320 + 192 + 96) + 64 + 111))
    assert trained.total_bytes == weights + 12 * P + trained.activation_bytes
    # generation: the KV cache (2 L kv_dim = 2 * 2 * 32 per token) + one layer's working set per token
    # (10 C + 4 H + h T = 320 + 192 + 4 * 10) + one row of logits per sequence
    generating = estimate_memory(config, batch_size=2, seq_len=10)
    assert generating.activation_bytes == 4 * (2 * 10 * (2 * 2 * 32 + 552) + 2 * 37)


def test_format_bytes():
    assert [format_bytes(n) for n in (512, 1536, 3 * 2**30, 2**50)] == ["512 B", "1.5 KiB", "3.0 GiB", "1.0 PiB"]


def test_machine_memory_is_the_hosts_ram():
    ram = machine_memory()
    with open("/proc/meminfo") as f:
        total = int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) * 1024
    assert ram is not None and 0 < ram <= total
    assert machine_memory("cpu") == ram


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # 13 trillion parameters per layer: 16 TiB for one weight matrix
        (dict(n_embd=2**20, n_head=16), r"this model needs about 288\.0 TiB \(weights 288\.0 TiB\) for 79,165,"),
        # ten million blocks: ~480 GB of Python objects alone, and minutes of construction
        (dict(n_layer=10**7, n_embd=16, n_head=2), r"this model needs about \d+\.\d GiB .* for 32,800,005,168 param"),
        # 1e13 parameters in the embedding table
        (dict(vocab_size=10**13 // 384), r"for 10,000,010,745,600 parameters, but this machine has"),
    ],
)
def test_a_model_that_cannot_fit_is_refused_before_allocating(kwargs, message):
    config = MiniGPTConfig(**kwargs)
    with pytest.raises(ValueError, match=message) as exc:
        MiniGPT(config)  # without the check: a terabyte allocation error, or minutes building modules
    text = str(exc.value)
    assert "\n" not in text and "of memory; make the model smaller (model.n_layer, model.n_embd" in text


def test_check_memory_names_the_request_and_the_machine(monkeypatch):
    monkeypatch.setattr(memory, "_host_memory", lambda: 2**30)
    config = MiniGPTConfig(vocab_size=65, n_layer=2, n_embd=64, n_head=2, context_length=64)
    check_memory(estimate_memory(config))  # the weights fit in 1 GiB
    estimate = estimate_memory(config, batch_size=6_000, training=True)
    with pytest.raises(ValueError, match=r"^training needs about 5\.\d GiB \(weights .* KiB, gradients and AdamW "
                       r"state .* MiB, activations 5\.\d GiB\) for 108,352 parameters, but this machine has 1\.0 GiB "
                       r"of memory; lower it$"):
        check_memory(estimate, what="training", hint="lower it")
    MiniGPT(config)  # 1 GiB is enough for the model alone


def test_meta_device_builds_skip_the_check(monkeypatch):
    monkeypatch.setattr(memory, "_host_memory", lambda: 1)
    with pytest.raises(ValueError, match="but this machine has 1 B of memory"):
        MiniGPT(tiny_config("rope", "rmsnorm", "swiglu", "gqa"))
    with torch.device("meta"):  # shapes only: nothing to refuse
        model = MiniGPT(dataclasses.replace(tiny_config("rope", "rmsnorm", "swiglu", "gqa"), n_layer=3))
    assert model.tok_emb.weight.is_meta


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # n_embd 1e9: 6 x (2 x 1e18 + 2 x 4e18) = 6e19 parameters at least; the MLP's 1e9 x 4e9 weight alone
        # overflowed torch's size calculation on the meta device
        (dict(n_embd=10**9, n_head=2), r"^model\.n_layer=6, model\.n_embd=1000000000, model\.vocab_size=65, "
         r"model\.context_length=256 asks for at least 6e\+19 parameters \(.* EiB of fp32 weights\), more than "
         r"any machine holds; make the model smaller \(model\.n_embd"),
        (dict(n_layer=10**18, n_embd=16, n_head=2), r"model\.n_layer=1000000000000000000, .* least 2\.56e\+21 param"),
        (dict(mlp_hidden=10**17, n_embd=16, n_head=2), r"model\.mlp_hidden=100000000000000000, .* at least 1\.92e\+19"),
        # a learned position table of 1e18 rows: below the lower bound, caught where torch describes the tensor
        (dict(context_length=10**18, n_embd=16, n_head=2), r"model\.context_length=1000000000000000000: a tensor of "
         r"this model is too large to describe \(Storage size calculation overflowed"),
    ],
)
def test_a_config_too_large_to_describe_is_one_line_naming_its_sizes(kwargs, message):
    config = MiniGPTConfig(**kwargs)
    for build in (estimate_memory, MiniGPT):
        with pytest.raises(ValueError, match=message) as exc:
            build(config)  # was a RuntimeError traceback from torch.nn.Linear on the meta device
        assert "\n" not in str(exc.value)
