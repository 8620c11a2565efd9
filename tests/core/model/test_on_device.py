"""The model on every device and in every compute dtype: the same logits as fp32 on the CPU, KV cache == full
forward, SDPA == the written-out softmax with padding masks, and padding invariance.

Each test runs once per device (the ``device`` fixture: CPU always, CUDA and MPS where present) and dtype;
results computed two ways must agree within the dtype's row of the one tolerance table (``TOLERANCES`` in
``tests/conftest.py``).
The variants below cover every positional encoding, both norms, every MLP and all three attention types.
"""

from __future__ import annotations

import copy

import pytest
import torch
from model_variants import incremental_logits, tiny_config, variant_id

from llm_lab.core.model import MiniGPT

VARIANTS = [
    ("learned", "layernorm", "gelu", "mha"),
    ("rope", "rmsnorm", "swiglu", "gqa"),
    ("alibi", "layernorm", "relu2", "mqa"),
    ("sinusoidal", "rmsnorm", "gelu_tanh", "gqa"),
    ("none", "layernorm", "swiglu", "mha"),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
B, T = 3, 16


def _models(variant: tuple[str, ...], device: torch.device, dtype: torch.dtype, **overrides):
    """The same weights twice: fp32 on the CPU (the reference) and ``dtype`` on ``device``."""
    torch.manual_seed(0)
    reference = MiniGPT(tiny_config(*variant, **overrides)).eval()
    return reference, copy.deepcopy(reference).to(device=device, dtype=dtype)


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 37, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=list(DTYPES), ids=list(DTYPES))
def dtype(request) -> torch.dtype:
    return DTYPES[request.param]


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_forward_matches_fp32_on_cpu(device, dtype, variant, assert_within_tolerance):
    reference, model = _models(variant, device, dtype)
    x = _ids()
    with torch.no_grad():
        logits, _ = model(x.to(device))
        assert logits.device.type == device.type and logits.dtype == dtype
        assert_within_tolerance(logits.float().cpu(), reference(x)[0], dtype)


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_kv_cache_equals_the_full_forward(device, dtype, variant, assert_within_tolerance):
    _, model = _models(variant, device, dtype)
    x = _ids().to(device)
    with torch.no_grad():
        full, _ = model(x)
    cached, cache = incremental_logits(model, x, prefix=5)
    assert cache.length == T
    assert_within_tolerance(cached, full, dtype)


def _padding_mask(device: torch.device) -> torch.Tensor:
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :5] = 0  # left padding
    mask[1, -6:] = 0  # right padding
    return mask.to(device)


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_sdpa_matches_the_written_out_softmax_with_padding(device, dtype, variant, assert_within_tolerance):
    """The fused kernel of this device and the plain path agree, with and without a padding mask."""
    _, sdpa = _models(variant, device, dtype)
    plain = MiniGPT(tiny_config(*variant, attn_impl="reference")).to(device=device, dtype=dtype).eval()
    plain.load_state_dict(sdpa.state_dict())
    x, mask = _ids().to(device), _padding_mask(device)
    with torch.no_grad():
        assert_within_tolerance(sdpa(x)[0], plain(x)[0], dtype)
        padded = sdpa(x, attention_mask=mask)[0]
        assert_within_tolerance(padded, plain(x, attention_mask=mask)[0], dtype)
    assert torch.isfinite(padded).all()  # NaN at a fully padded query row would spread to later layers


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_padding_invariance(device, dtype, variant, assert_within_tolerance):
    """Left- and right-padded rows give, at real positions, the logits of the sequence run alone."""
    _, model = _models(variant, device, dtype)
    x, mask = _ids().to(device), _padding_mask(device)
    padded = x.masked_fill(mask == 0, 0)  # what sits under padding must not matter
    with torch.no_grad():
        logits, _ = model(padded, attention_mask=mask)
        assert torch.isfinite(logits).all()
        assert_within_tolerance(logits[0, 5:], model(x[:1, 5:])[0][0], dtype)
        assert_within_tolerance(logits[1, :-6], model(x[1:2, :-6])[0][0], dtype)
        assert_within_tolerance(logits[2], model(x[2:3])[0][0], dtype)
