"""Positional encodings, each a small class picked by ``config.pos_encoding`` from ``POSITIONAL_ENCODINGS``.

* ``learned``: a trained table of absolute positions added to the token embeddings (GPT-2; Radford et al.,
  2019, "Language Models are Unsupervised Multitask Learners").
* ``sinusoidal``: the fixed sine/cosine table of "Attention Is All You Need" (Vaswani et al., 2017), added to
  the token embeddings and computed on the fly, so it extends past the training context.
* ``rope``: rotary position embedding (Su et al., 2021, "RoFormer"); queries and keys are rotated by an
  angle proportional to their position, so their dot product depends only on the distance. We use the
  "rotate half" channel layout of Hugging Face's Llama, so Llama weights map 1:1.
* ``alibi``: attention with linear biases (Press, Smith & Lewis, 2022, "Train Short, Test Long"); no
  embedding at all, each head adds ``-slope * distance`` to its attention scores.
* ``none``: no explicit positions (the causal mask alone leaks some order information; Haviv et al., 2022).

Every class has the same constructor ``(config)`` and three hooks the model calls once per forward pass;
each returns ``None`` when the encoding does not act at that place:

* ``embedding(position_ids, dtype)``  -> ``(B, T, n_embd)`` added to the token embeddings;
* ``rotary(position_ids, dtype)``     -> ``(cos, sin)``, each ``(B, T, head_dim)``, for :func:`apply_rotary`;
* ``attention_bias(q_pos, k_pos)``    -> ``(B, n_head, T, S)`` float32 bias added to the attention scores.

What depends on the encoding is declared by its class, never found by matching its name:

* ``extrapolates``: whether it can run past the training context (``max_seq_len > context_length``, the
  positional-encoding study's extrapolation columns, and generation's default overflow policy);
* ``hf_family``: the Hugging Face family whose models use it (``"gpt2"``, ``"llama"``), which picks the family
  of an HF export; ``None`` when no HF model can hold it;
* ``check_config(config)``: its shape rules (RoPE needs an even head size), called by ``MiniGPTConfig``;
* ``reset_parameters()``: the starting values of its weights, if it has any (called by ``init_weights``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from llm_lab.core.model.registry import lookup

if TYPE_CHECKING:  # config.py imports this module for POSITIONAL_ENCODINGS
    from llm_lab.core.model.config import MiniGPTConfig

__all__ = [
    "POSITIONAL_ENCODINGS",
    "ALiBiPositions",
    "LearnedPositions",
    "NoPositions",
    "PositionalEncoding",
    "RotaryPositions",
    "SinusoidalPositions",
    "alibi_slopes",
    "apply_rotary",
    "build_positional_encoding",
    "rotate_half",
]


class PositionalEncoding(nn.Module):
    """The base class: every hook returns ``None`` (the encoding does not act there).

    Attributes:
        extrapolates: True when the encoding gives sensible positions past ``context_length`` (no table of
            positions). False here, the safe answer: a subclass that can says so.
        hf_family: the Hugging Face family (``"gpt2"``, ``"llama"``) whose models use this encoding, or None. Not
            inherited: a subclass computes something else, so it is exportable only if it declares so itself.
    """

    extrapolates: ClassVar[bool] = False
    hf_family: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "hf_family" not in cls.__dict__:
            cls.hf_family = None

    def __init__(self, config: MiniGPTConfig) -> None:
        super().__init__()
        self.config = config

    @classmethod
    def check_config(cls, config: MiniGPTConfig) -> None:
        """Raise ``ValueError`` (saying what to change) if ``config`` has a shape this encoding cannot serve."""

    def reset_parameters(self) -> None:
        """Set the starting values of the encoding's own weights (none here)."""

    def lookup_parameters(self) -> int:
        """How many of its parameters are read by index (a table of positions): like the token embedding they
        cost no matrix-multiply FLOPs and are left out of ``num_parameters(non_embedding=True)``. None here."""
        return 0

    def embedding(self, position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        return None

    def rotary(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None

    def attention_bias(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor | None:
        return None


class NoPositions(PositionalEncoding):
    """``none``: no positional information at all."""

    extrapolates = True


class LearnedPositions(PositionalEncoding):
    """A trained ``(context_length, n_embd)`` table; ``weight`` is GPT-2's ``wpe``. No entries past the context."""

    hf_family = "gpt2"

    def __init__(self, config: MiniGPTConfig) -> None:
        super().__init__(config)
        self.weight = nn.Parameter(torch.zeros(config.context_length, config.n_embd))

    def reset_parameters(self) -> None:
        """``normal(0, init_std)``, the scale of the token embedding it is added to."""
        nn.init.normal_(self.weight, mean=0.0, std=self.config.init_std)

    def lookup_parameters(self) -> int:
        return self.weight.numel()  # the whole table is a lookup

    def embedding(self, position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return nn.functional.embedding(position_ids, self.weight)  # (B, T, n_embd)


class SinusoidalPositions(PositionalEncoding):
    """``pe[p, 2i] = sin(p / 10000^(2i/C)) / sqrt(C)``, ``pe[p, 2i+1] = cos(p / 10000^(2i/C)) / sqrt(C)``.

    The paper adds the unit-amplitude table to token embeddings multiplied by ``sqrt(C)``. Our embeddings
    start at std ``init_std`` (0.02) and are not multiplied, so we divide the table by ``sqrt(C)`` instead: the
    ratio of position to token signal is the paper's. Unscaled, the table (norm ~ ``sqrt(C/2)``) drowns the
    token embeddings (norm ~ ``0.02 sqrt(C)``) and training stalls for hundreds of steps.
    """

    base: float = 10000.0
    extrapolates = True

    @classmethod
    def check_config(cls, config: MiniGPTConfig) -> None:
        if config.n_embd % 2 != 0:
            raise ValueError(f"sinusoidal positions need an even n_embd, got {config.n_embd}")

    def embedding(self, position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        n_embd = self.config.n_embd
        inv_freq = self.base ** (-torch.arange(0, n_embd, 2, device=position_ids.device, dtype=torch.float32) / n_embd)
        angles = position_ids.float()[..., None] * inv_freq  # (B, T, n_embd / 2)
        # Interleave so that even channels hold sines and odd channels cosines, as in the paper.
        pe = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (B, T, n_embd)
        return (pe * n_embd**-0.5).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the two halves of the last dimension (the Llama/GPT-NeoX layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries ``(B, n_head, T, hd)`` and keys ``(B, n_kv_head, T, hd)`` by ``cos, sin`` ``(B, T, hd)``.

    Channel ``i`` is paired with channel ``i + hd/2`` and the pair is rotated by ``position * inv_freq[i]``.
    """
    cos, sin = cos[:, None].to(q.dtype), sin[:, None].to(q.dtype)  # (B, 1, T, hd): broadcast over heads
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class RotaryPositions(PositionalEncoding):
    """RoPE with base ``config.rope_theta``: ``inv_freq[i] = theta^(-2i / head_dim)``."""

    extrapolates = True
    hf_family = "llama"

    @classmethod
    def check_config(cls, config: MiniGPTConfig) -> None:
        if config.head_dim % 2 != 0:
            raise ValueError(
                f"RoPE rotates pairs of channels, so the head size must be even; "
                f"n_embd / n_head = {config.head_dim} (change n_embd or n_head)"
            )

    def rotary(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        hd = self.config.head_dim
        # Recomputed each call in float32 (a few numbers) rather than kept as a buffer that model.half() would
        # round: the angles must stay exact for long positions.
        exponent = torch.arange(0, hd, 2, device=position_ids.device, dtype=torch.float32) / hd
        inv_freq = 1.0 / (self.config.rope_theta**exponent)  # (hd / 2,)
        freqs = position_ids.float()[..., None] * inv_freq  # (B, T, hd / 2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, hd): both halves of a pair share an angle
        return emb.cos().to(dtype), emb.sin().to(dtype)


def alibi_slopes(n_head: int) -> torch.Tensor:
    """The per-head slopes of ALiBi: a geometric sequence starting at ``2^(-8/n)``.

    For a power of two ``n`` the slopes are ``2^(-8 i / n)`` for ``i = 1..n``. Otherwise (as in the paper's
    code) take the slopes of the closest smaller power of two ``m`` and add every other slope of ``2m``.
    """

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_head).is_integer():
        slopes = power_of_two(n_head)
    else:
        m = 2 ** math.floor(math.log2(n_head))
        slopes = power_of_two(m) + power_of_two(2 * m)[0::2][: n_head - m]
    return torch.tensor(slopes, dtype=torch.float32)


class ALiBiPositions(PositionalEncoding):
    """ALiBi: head ``h`` adds ``-slope_h * (query_position - key_position)`` to its attention scores."""

    extrapolates = True

    def __init__(self, config: MiniGPTConfig) -> None:
        super().__init__(config)
        # Not a parameter, not a buffer: a function of n_head alone, recomputed in float32 so that model.half()
        # cannot round it.
        self.slopes = alibi_slopes(config.n_head)

    def attention_bias(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        distance = query_positions[:, :, None] - key_positions[:, None, :]  # (B, T, S)
        slopes = self.slopes.to(distance.device)
        return -slopes[None, :, None, None] * distance[:, None].float()  # (B, n_head, T, S)


POSITIONAL_ENCODINGS: dict[str, type[PositionalEncoding]] = {
    "learned": LearnedPositions,
    "sinusoidal": SinusoidalPositions,
    "rope": RotaryPositions,
    "alibi": ALiBiPositions,
    "none": NoPositions,
}
"""The only list of positional-encoding names: ``MiniGPTConfig.pos_encoding`` picks one."""


def build_positional_encoding(config: MiniGPTConfig) -> PositionalEncoding:
    """The positional encoding named by ``config.pos_encoding``."""
    return lookup(POSITIONAL_ENCODINGS, "pos_encoding", config.pos_encoding)(config)
