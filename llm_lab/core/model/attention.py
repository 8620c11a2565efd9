"""Causal self-attention with multi-head, grouped-query and multi-query key/value heads.

* Scaled dot-product attention (Vaswani et al., 2017, "Attention Is All You Need").
* Multi-query attention (Shazeer, 2019, "Fast Transformer Decoding: One Write-Head is All You Need") and
  grouped-query attention (Ainslie et al., 2023, "GQA"): ``n_kv_head`` key/value heads, each shared by
  ``n_head / n_kv_head`` query heads. ``n_kv_head == n_head`` is ordinary MHA.
* Optional QK-norm (Dehghani et al., 2023, "Scaling Vision Transformers to 22 Billion Parameters"):
  queries and keys are normalised per head before the dot product, which keeps the logits bounded.

Interchangeable implementations of the softmax step, picked by ``config.attn_impl`` from ``ATTENTION_IMPLS``:
``sdpa`` calls ``torch.nn.functional.scaled_dot_product_attention`` (PyTorch's fused kernels); ``chunked`` computes
plain causal passes in query chunks with large batched products (:mod:`llm_lab.core.model.chunked_attention`, the
fast choice for training on a CPU, where the backward of PyTorch's flash kernel is slow); ``auto`` (the default)
takes ``chunked`` where it is the faster kernel and its memory is bounded, ``sdpa`` everywhere else; ``reference``
spells out ``softmax(q k^T / sqrt(d) + mask) v`` for tests and teaching.

Looking inside. A forward pass given a :class:`~llm_lab.core.model.trace.ForwardTrace` takes the written-out path
whatever ``attn_impl`` says and records each layer's attention probabilities ``(B, n_head, T, S)``
(:func:`attention_probs`); without one, nothing is recorded and the configured (fast) path runs.

Masks. The model builds one mask per forward pass with :func:`build_attention_mask` and hands it to every
layer: ``None`` for a plain causal pass (``T == S``, the fast ``is_causal`` path), a boolean ``(B, 1, T, S)``
"may attend" mask for padding and cached prefixes, or a float ``(B, n_head, T, S)`` additive mask when ALiBi
adds its biases. A query whose row would be entirely masked (a left-padding position, which can see only
padding) is allowed to see itself, so its output is finite: a NaN there would leak into real positions
through ``0 * NaN`` in the next layer's ``probs @ v``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from llm_lab.core.model.chunked_attention import chunked_causal_attention, chunked_is_faster, compute_dtype
from llm_lab.core.model.kv_cache import KVCache
from llm_lab.core.model.norms import build_norm
from llm_lab.core.model.positional import apply_rotary
from llm_lab.core.model.registry import lookup
from llm_lab.core.model.trace import ForwardTrace

if TYPE_CHECKING:  # config.py imports this module for ATTENTION_IMPLS and ATTENTION_TYPES
    from llm_lab.core.model.config import MiniGPTConfig

__all__ = [
    "ATTENTION_IMPLS",
    "ATTENTION_TYPES",
    "CausalSelfAttention",
    "attention_probs",
    "auto_attention",
    "build_attention_mask",
    "chunked_attention",
    "reference_attention",
    "repeat_kv",
    "sdpa_attention",
]


def build_attention_mask(
    query_len: int,
    key_len: int,
    padding_mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor | None:
    """Combine causality, padding and an additive bias into one attention mask.

    Args:
        query_len: ``T``, the new tokens; they sit at key slots ``[S - T, S)``.
        key_len: ``S``, cached plus new positions.
        padding_mask: ``(B, S)`` bool, True for real tokens, or None.
        bias: ``(B, n_head, T, S)`` float additive bias (ALiBi), or None.
        device: where to build the mask.

    Returns:
        None for a plain causal pass with ``T == S``; otherwise a bool ``(B or 1, 1, T, S)`` mask (True = may
        attend) or, with a bias, a float ``(B, n_head, T, S)`` mask holding the bias and ``-inf``.
    """
    if padding_mask is None and bias is None and query_len == key_len:
        return None
    past = key_len - query_len
    query_slot = torch.arange(query_len, device=device) + past  # (T,)
    key_slot = torch.arange(key_len, device=device)  # (S,)
    allowed = (key_slot[None, :] <= query_slot[:, None])[None, None]  # (1, 1, T, S)
    if padding_mask is not None:
        allowed = allowed & padding_mask[:, None, None, :]  # (B, 1, T, S)
        # A query that sees nothing (left padding) may see itself, so its softmax is finite.
        nothing = ~allowed.any(dim=-1, keepdim=True)  # (B, 1, T, 1)
        own = (key_slot[None, :] == query_slot[:, None])[None, None]  # (1, 1, T, S)
        allowed = allowed | (nothing & own)
    if bias is None:
        return allowed
    return bias.masked_fill(~allowed, float("-inf"))  # (B, n_head, T, S)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(B, n_kv_head, S, hd) -> (B, n_kv_head * n_rep, S, hd)``: each key/value head serves ``n_rep`` queries.

    Query head ``h`` uses key/value head ``h // n_rep`` (the layout of Hugging Face's ``repeat_kv``).
    """
    if n_rep == 1:
        return x
    B, n_kv, S, hd = x.shape
    return x[:, :, None].expand(B, n_kv, n_rep, S, hd).reshape(B, n_kv * n_rep, S, hd)


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(hd) + mask) v`` through PyTorch's fused ``scaled_dot_product_attention``."""
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=mask is None)


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(hd) + mask)`` in float32: ``(B, n_head, T, S)``, each row sums to 1 over the keys."""
    T, S = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, n_head, T, S)
    if mask is None:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
    # A boolean mask says who may attend; a float mask (ALiBi) already holds -inf where nobody may.
    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return torch.softmax(scores.float(), dim=-1)


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """The same computation written out: scores, mask, float32 softmax, dropout, weighted sum."""
    probs = attention_probs(q, k, mask).to(q.dtype)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v  # (B, n_head, T, hd)


def chunked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """A plain causal pass (no mask, no dropout, as many keys as queries) through the chunked kernel; others: sdpa.

    The chunked kernel (:func:`~llm_lab.core.model.chunked_attention.chunked_causal_attention`) knows only the
    causal mask; a padding mask, a cached prefix or attention dropout goes to :func:`sdpa_attention`.
    """
    if mask is None and dropout_p == 0.0 and q.shape[-2] == k.shape[-2]:
        return chunked_causal_attention(q, k, v)
    return sdpa_attention(q, k, v, mask, dropout_p)


def auto_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """:func:`chunked_attention` where it is the faster kernel and its memory is bounded, else :func:`sdpa_attention`.

    Chunked: a plain causal pass on a CPU where :func:`~llm_lab.core.model.chunked_attention.chunked_is_faster`
    says so (bf16 passes; float32 training passes of 256 positions and more; training only up to
    ``MAX_TRAINING_POSITIONS``, as it keeps the probabilities for the backward). Everything else (GPUs, padding
    masks, cached decoding, attention dropout, short float32 passes) runs PyTorch's fused kernels.
    """
    training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if q.device.type == "cpu" and chunked_is_faster(compute_dtype(q), q.shape[-2], training):
        return chunked_attention(q, k, v, mask, dropout_p)  # which sends what it cannot run to sdpa
    return sdpa_attention(q, k, v, mask, dropout_p)


AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, float], torch.Tensor]
ATTENTION_IMPLS: dict[str, AttentionFn] = {
    "auto": auto_attention,
    "sdpa": sdpa_attention,
    "chunked": chunked_attention,
    "reference": reference_attention,
}
"""The only list of attention implementations: ``MiniGPTConfig.attn_impl`` picks one."""

ATTENTION_TYPES: dict[str, str] = {
    "mha": "multi-head: one key/value head per query head (n_kv_head == n_head)",
    "gqa": "grouped-query: each key/value head serves a group of query heads (1 < n_kv_head < n_head)",
    "mqa": "multi-query: one key/value head for every query head (n_kv_head == 1)",
}
"""The only list of attention types, each with its head layout. One class serves all three: the type is a name for
the relation between ``n_head`` and ``n_kv_head`` (``MiniGPTConfig.attention_type``), not a module of its own."""


class CausalSelfAttention(nn.Module):
    """Causal self-attention with ``n_head`` query heads and ``n_kv_head`` key/value heads.

    Separate ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj`` (Llama's names; GPT-2's fused ``c_attn`` is
    split on conversion), so the GQA shapes are visible in the weights.

    Attributes:
        residual_projections: the ``nn.Linear`` layers whose output is added to the residual stream (``init_weights``
            gives them ``std / sqrt(2 * n_layer)``, or zeros with ``zero_init_residual``).
    """

    residual_projections: ClassVar[tuple[str, ...]] = ("o_proj",)

    def __init__(self, config: MiniGPTConfig, layer_idx: int) -> None:
        super().__init__()
        attend = lookup(ATTENTION_IMPLS, "attn_impl", config.attn_impl)
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.n_rep = config.n_rep
        self.q_proj = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=config.bias)
        self.k_proj = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=config.bias)
        self.v_proj = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=config.bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, config.n_embd, bias=config.bias)
        if config.qk_norm:
            self.q_norm = build_norm(config.norm, self.head_dim, config.norm_eps, bias=False)
            self.k_norm = build_norm(config.norm, self.head_dim, config.norm_eps, bias=False)
        else:
            self.q_norm = self.k_norm = nn.Identity()
        self.attend = attend
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.fused: nn.Module | None = None  # q/k/v as one product, set only on a decode copy

    #: The projections that read the same input, in the order :meth:`project_qkv` returns them. A decode copy
    #: (:func:`llm_lab.core.decode.fast_linear.prepare_for_decode`) holds them as one product in ``fused``.
    fuse_for_decode: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj")

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries ``(B, T, n_head * hd)``, keys and values ``(B, T, n_kv_head * hd)`` of ``x`` ``(B, T, C)``."""
        if self.fused is not None:
            return self.fused(x)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        value_embed: torch.Tensor | None = None,
        trace: ForwardTrace | None = None,
    ) -> torch.Tensor:
        """Attend over ``x`` ``(B, T, C)`` (and the cached prefix); return ``(B, T, C)``.

        Args:
            x: normalised hidden states.
            mask: from :func:`build_attention_mask`.
            rotary: RoPE ``(cos, sin)``, each ``(B, T, head_dim)``, or None.
            cache: a :class:`KVCache` to append to and read from, or None.
            value_embed: ``(B, T, n_kv_head * hd)`` added to the values (``value_embeddings``), or None.
            trace: record this layer's attention probabilities there (through the written-out path), or None.
        """
        B, T, C = x.shape
        q, k, v = self.project_qkv(x)
        if value_embed is not None:
            v = v + value_embed.to(v.dtype)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, n_head, T, hd)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv_head, T, hd)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv_head, T, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            q, k = apply_rotary(q, k, *rotary)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, n_kv_head, S, hd), S = cached + T
        k, v = repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)  # (B, n_head, S, hd)
        dropout_p = self.attn_dropout if self.training else 0.0
        if trace is None:
            y = self.attend(q, k, v, mask, dropout_p)  # (B, n_head, T, hd)
        else:
            probs = attention_probs(q, k, mask)  # (B, n_head, T, S), float32
            trace.attentions.append(probs)
            y = F.dropout(probs.to(q.dtype), p=dropout_p) @ v  # (B, n_head, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, C)
        return self.resid_dropout(self.o_proj(y))
