"""Positional encodings: golden values worked out by hand and the properties each one promises."""

from __future__ import annotations

import math

import pytest
import torch

from llm_lab.core.model.config import MiniGPTConfig
from llm_lab.core.model.positional import (
    POSITIONAL_ENCODINGS,
    ALiBiPositions,
    RotaryPositions,
    SinusoidalPositions,
    alibi_slopes,
    apply_rotary,
    build_positional_encoding,
    rotate_half,
)


def test_alibi_slopes_power_of_two():
    """8 heads: start 2^(-8/8) = 1/2, ratio 1/2 -> 1/2, 1/4, ..., 1/256 (the paper's example)."""
    assert alibi_slopes(8).tolist() == [2.0**-i for i in range(1, 9)]


def test_alibi_slopes_not_a_power_of_two():
    """6 heads: the 4-head slopes 2^-2, 2^-4, 2^-6, 2^-8, then every other 8-head slope: 2^-1, 2^-3."""
    assert alibi_slopes(6).tolist() == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]


def test_alibi_bias_is_minus_slope_times_distance():
    pe = ALiBiPositions(MiniGPTConfig(n_head=2, n_embd=8))  # slopes 2^-4, 2^-8
    pos = torch.arange(3)[None]
    bias = pe.attention_bias(pos, pos)  # (1, 2, 3, 3)
    assert bias[0, 0, 2].tolist() == [-2 / 16, -1 / 16, 0.0]
    assert bias[0, 1, 1, 0].item() == -1 / 256


def test_sinusoidal_table_by_hand():
    """With C=4 the table is scaled by 1/sqrt(4) = 1/2: position 0 is [sin 0, cos 0, ...] / 2 = [0, .5, 0, .5];
    position 1 is [sin 1, cos 1, sin .01, cos .01] / 2 (frequencies 1 and 10000^(-2/4) = 0.01)."""
    pe = SinusoidalPositions(MiniGPTConfig(n_embd=4, n_head=1, pos_encoding="sinusoidal"))
    table = pe.embedding(torch.tensor([[0, 1]]), torch.float64)[0]
    expected = torch.tensor(
        [[0, 1, 0, 1], [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)]], dtype=torch.float64
    ) / 2
    torch.testing.assert_close(table, expected, atol=1e-6, rtol=0)


def test_rotate_half_layout():
    """[x1, x2] -> [-x2, x1] on halves (Llama's layout, not interleaved pairs)."""
    assert rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [-3.0, -4.0, 1.0, 2.0]


def test_rope_scores_depend_only_on_distance_and_keep_norms():
    config = MiniGPTConfig(n_embd=16, n_head=2, pos_encoding="rope")  # head_dim 8
    rope = RotaryPositions(config)
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)

    def score(m: int, n: int) -> torch.Tensor:
        cos_q, sin_q = rope.rotary(torch.tensor([[m]]), torch.float64)
        cos_k, sin_k = rope.rotary(torch.tensor([[n]]), torch.float64)
        rq, _ = apply_rotary(q, q, cos_q, sin_q)
        rk, _ = apply_rotary(k, k, cos_k, sin_k)
        torch.testing.assert_close(rq.norm(), q.norm())  # a rotation
        return (rq * rk).sum()

    torch.testing.assert_close(score(5, 2), score(13, 10))
    torch.testing.assert_close(score(0, 0), (q * k).sum())
    assert not torch.isclose(score(5, 2), score(5, 3))


def test_rope_frequencies_follow_theta():
    """Angle of channel pair i at position p is p * theta^(-2i/d): with d=4, theta=100 -> p, p/10."""
    rope = RotaryPositions(MiniGPTConfig(n_embd=4, n_head=1, pos_encoding="rope", rope_theta=100.0))
    cos, sin = rope.rotary(torch.tensor([[3]]), torch.float64)
    expected = torch.tensor([3.0, 0.3, 3.0, 0.3], dtype=torch.float64)
    torch.testing.assert_close(cos[0, 0], expected.cos(), atol=1e-6, rtol=0)
    torch.testing.assert_close(sin[0, 0], expected.sin(), atol=1e-6, rtol=0)


def test_registry_builds_each_encoding_and_only_the_right_hooks_act():
    pos = torch.arange(4)[None]
    for name in POSITIONAL_ENCODINGS:
        pe = build_positional_encoding(MiniGPTConfig(n_embd=8, n_head=2, pos_encoding=name))
        acts = (
            pe.embedding(pos, torch.float32) is not None,
            pe.rotary(pos, torch.float32) is not None,
            pe.attention_bias(pos, pos) is not None,
        )
        expected = {
            "learned": (True, False, False),
            "sinusoidal": (True, False, False),
            "rope": (False, True, False),
            "alibi": (False, False, True),
            "none": (False, False, False),
        }[name]
        assert acts == expected, name


def test_unknown_encoding_lists_the_valid_ones():
    config = MiniGPTConfig(n_embd=8, n_head=2)
    config.pos_encoding = "xpos"  # bypassing validation on purpose
    with pytest.raises(ValueError, match=r"choose one of: learned, sinusoidal, rope, alibi, none"):
        build_positional_encoding(config)
