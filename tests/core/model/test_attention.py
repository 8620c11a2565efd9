"""Attention: the mask builder by hand, GQA head sharing, sdpa vs reference, fully masked rows."""

from __future__ import annotations

import torch

from llm_lab.core.model.attention import (
    CausalSelfAttention,
    build_attention_mask,
    reference_attention,
    repeat_kv,
    sdpa_attention,
)
from llm_lab.core.model.config import MiniGPTConfig


def test_plain_causal_pass_needs_no_mask():
    assert build_attention_mask(5, 5, None, None, torch.device("cpu")) is None


def test_mask_with_cached_prefix_and_padding_by_hand():
    """2 cached + 2 new positions, the first key is padding:

    query slot 2 sees keys 1, 2; query slot 3 sees keys 1, 2, 3 (key 0 is padding).
    """
    pad = torch.tensor([[False, True, True, True]])
    mask = build_attention_mask(2, 4, pad, None, torch.device("cpu"))
    assert mask.shape == (1, 1, 2, 4)
    assert mask[0, 0].tolist() == [[False, True, True, False], [False, True, True, True]]


def test_fully_masked_query_may_see_itself_and_stays_finite():
    """Left padding: query 0 is padding and sees no real key; it is let to see itself so softmax is finite."""
    pad = torch.tensor([[False, False, True]])
    mask = build_attention_mask(3, 3, pad, None, torch.device("cpu"))
    assert mask[0, 0].tolist() == [[True, False, False], [False, True, False], [False, False, True]]
    q = k = v = torch.randn(1, 2, 3, 4)
    for attend in (sdpa_attention, reference_attention):
        assert torch.isfinite(attend(q, k, v, mask, 0.0)).all()


def test_bias_mask_puts_minus_inf_where_not_allowed():
    bias = torch.full((1, 2, 2, 2), 0.5)
    mask = build_attention_mask(2, 2, None, bias, torch.device("cpu"))
    assert mask[0, 1].tolist() == [[0.5, float("-inf")], [0.5, 0.5]]


def test_repeat_kv_shares_each_kv_head_with_consecutive_query_heads():
    kv = torch.arange(2.0).view(1, 2, 1, 1)  # kv head 0 holds 0, kv head 1 holds 1
    assert repeat_kv(kv, 3).flatten().tolist() == [0, 0, 0, 1, 1, 1]


def test_gqa_equals_mha_with_duplicated_kv_heads():
    """A GQA layer is an MHA layer whose k/v projections repeat each kv head's rows for its query group."""
    gqa_cfg = MiniGPTConfig(n_embd=16, n_head=4, n_kv_head=2, attn_impl="reference")
    mha_cfg = MiniGPTConfig(n_embd=16, n_head=4, attn_impl="reference")
    gqa, mha = CausalSelfAttention(gqa_cfg, 0), CausalSelfAttention(mha_cfg, 0)
    sd = gqa.state_dict()
    for name in ("k_proj", "v_proj"):
        w, b = sd[f"{name}.weight"].view(2, 4, 16), sd[f"{name}.bias"].view(2, 4)
        sd[f"{name}.weight"] = w.repeat_interleave(2, dim=0).reshape(16, 16)
        sd[f"{name}.bias"] = b.repeat_interleave(2, dim=0).reshape(16)
    mha.load_state_dict(sd)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(gqa(x), mha(x))


def test_sdpa_and_reference_agree_for_every_mask_kind():
    q, k, v = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
    pad = torch.tensor([[True] * 5, [False, False, True, True, True]])
    masks = [
        build_attention_mask(3, 5, None, None, torch.device("cpu")),
        build_attention_mask(3, 5, pad, None, torch.device("cpu")),
        build_attention_mask(3, 5, pad, torch.randn(2, 4, 3, 5), torch.device("cpu")),
    ]
    for mask in masks:
        torch.testing.assert_close(sdpa_attention(q, k, v, mask, 0.0), reference_attention(q, k, v, mask, 0.0))
    q = torch.randn(2, 4, 5, 8)
    torch.testing.assert_close(sdpa_attention(q, k, v, None, 0.0), reference_attention(q, k, v, None, 0.0))


def test_qk_norm_normalises_per_head():
    config = MiniGPTConfig(n_embd=16, n_head=2, qk_norm=True, norm="rmsnorm")
    attn = CausalSelfAttention(config, 0)
    assert attn.q_norm.weight.shape == (8,) and attn.k_norm.weight.shape == (8,)
    # Scaling the queries' projection does not change the output: RMSNorm removes the scale.
    x = torch.randn(1, 4, 16)
    before = attn(x)
    attn.q_proj.weight.data *= 7.0
    attn.q_proj.bias.data *= 7.0
    torch.testing.assert_close(attn(x), before, atol=1e-5, rtol=1e-4)
