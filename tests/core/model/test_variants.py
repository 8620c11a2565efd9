"""Every variant (positional encoding x norm x MLP x attention type) runs, learns, and decodes consistently.

The default suite covers every pair of values (``PAIRWISE``, about 20 models); the full product of 120 runs
behind ``slow``.
"""

from __future__ import annotations

import math

import pytest
import torch
from model_variants import FULL_PRODUCT, PAIRWISE, tiny_config, variant_id

from llm_lab.core.model import MiniGPT, lm_loss

B, T = 3, 16


def _batch(vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T + 1), generator=g)


def _check_variant(variant: tuple[str, ...], **overrides) -> None:
    config = tiny_config(*variant, **overrides)
    model = MiniGPT(config)
    data = _batch(config.vocab_size)
    x, y = data[:, :-1], data[:, 1:]

    # Shapes, no cache unless asked, and a loss near ln(vocab) at init (small init -> near-uniform predictions).
    logits, past = model(x)
    assert logits.shape == (B, T, config.vocab_size) and past is None
    loss0 = lm_loss(logits, y)
    assert math.isfinite(loss0.item())
    assert abs(loss0.item() - math.log(config.vocab_size)) < 0.5

    # Incremental decoding through the KV cache equals the full forward pass.
    model.eval()
    with torch.no_grad():
        full, _ = model(x)
        step, cache = model(x[:, :5], use_cache=True)
        pieces = [step]
        for t in range(5, T):
            step, cache = model(x[:, t : t + 1], past_key_values=cache)
            pieces.append(step)
        assert cache.length == T
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)

    # A few AdamW steps overfit one batch.
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(40):
        loss = lm_loss(model(x)[0], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.35 * loss0.item(), f"loss only fell from {loss0.item():.3f} to {loss.item():.3f}"


@pytest.mark.parametrize("variant", PAIRWISE, ids=variant_id)
def test_variant_pairwise(variant):
    _check_variant(variant)


@pytest.mark.slow
@pytest.mark.parametrize("variant", [v for v in FULL_PRODUCT if v not in PAIRWISE], ids=variant_id)
def test_variant_full_product(variant):
    _check_variant(variant)


def test_pairwise_subset_covers_every_pair():
    """Every value pair of every two factors appears in the default-suite subset."""
    for i in range(4):
        for j in range(i + 1, 4):
            wanted = {(a[i], a[j]) for a in FULL_PRODUCT}
            assert {(a[i], a[j]) for a in PAIRWISE} == wanted
    assert len(PAIRWISE) < len(FULL_PRODUCT) / 4


@pytest.mark.parametrize("variant", PAIRWISE, ids=variant_id)
def test_sdpa_matches_reference_with_padding(variant):
    """The fused path and the written-out softmax give the same logits, also with a padded batch."""
    sdpa = MiniGPT(tiny_config(*variant)).eval()
    ref = MiniGPT(tiny_config(*variant, attn_impl="reference")).eval()
    ref.load_state_dict(sdpa.state_dict())
    x = _batch(sdpa.config.vocab_size)[:, :-1]
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :4] = 0  # left padding
    mask[1, -3:] = 0  # right padding
    with torch.no_grad():
        torch.testing.assert_close(sdpa(x)[0], ref(x)[0], atol=1e-5, rtol=1e-5)
        padded_sdpa, padded_ref = sdpa(x, attention_mask=mask)[0], ref(x, attention_mask=mask)[0]
        torch.testing.assert_close(padded_sdpa, padded_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", PAIRWISE, ids=variant_id)
def test_padding_invariance(variant):
    """Left- and right-padded rows give, at real positions, the logits of the sequence run alone."""
    _check_padding(variant)


# QK-norm is a switch on top of any variant: one row per norm and positional family is enough.
QK_NORM_VARIANTS = [("rope", "rmsnorm", "swiglu", "gqa"), ("learned", "layernorm", "gelu", "mha"),
                    ("alibi", "layernorm", "relu2", "mqa")]


@pytest.mark.parametrize("variant", QK_NORM_VARIANTS, ids=variant_id)
def test_qk_norm_variants(variant):
    """With qk_norm: shapes, loss, KV cache == full forward, overfitting, and padding invariance."""
    _check_variant(variant, qk_norm=True)
    _check_padding(variant, qk_norm=True)


def _check_padding(variant: tuple[str, ...], **overrides) -> None:
    model = MiniGPT(tiny_config(*variant, **overrides)).eval()
    x = _batch(model.config.vocab_size)[:, :-1]
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :5] = 0
    mask[1, -6:] = 0
    padded = x.clone()
    padded[mask == 0] = 0  # what sits under padding must not matter
    with torch.no_grad():
        logits, _ = model(padded, attention_mask=mask)
        assert torch.isfinite(logits).all()  # also at padded positions: NaN there would spread
        torch.testing.assert_close(logits[0, 5:], model(x[:1, 5:])[0][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits[1, :-6], model(x[1:2, :-6])[0][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits[2], model(x[2:3])[0][0], atol=1e-5, rtol=1e-5)
