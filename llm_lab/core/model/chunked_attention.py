"""Causal attention computed in query chunks, for training on a CPU.

PyTorch's CPU kernel for ``scaled_dot_product_attention`` is a flash-attention kernel: it never holds the
``(T, T)`` scores, which saves memory, but its backward runs in small tiles and is the slowest part of a small
model's training step on a CPU (at 256 positions, bf16, about 2.6x the time of the same attention written as a
few large batched matrix products). This module writes the computation out, with two changes that make it fast:

1. **Only the causal part is computed.** The queries are taken ``chunk`` rows at a time; the queries of rows
   ``[start, end)`` can see only keys ``[0, end)``, so their scores are ``(chunk, end)``, not ``(chunk, T)``.
   At ``T = 256`` and ``chunk = 128`` that is 3/4 of the square; the upper-right block is never computed.
2. **The backward reuses the forward's probabilities.** They are saved (in the input dtype, as a flash kernel
   rounds them before ``probs @ v``), so the backward is four batched products and one softmax backward per chunk::

       forward, per chunk:   S = q_c k_{:end}^T / sqrt(hd) (+ -inf above the diagonal),  P = softmax(S),
                             out_c = P v_{:end}
       backward, per chunk:  dv_{:end} += P^T dout_c,  dP = dout_c v_{:end}^T,  dS = P * (dP - rowsum(dP * P)),
                             dq_c = dS k_{:end} / sqrt(hd),  dk_{:end} += dS^T q_c / sqrt(hd)

The price is memory: a training pass keeps every chunk's probabilities, ``B * n_head * T * (T + chunk) / 2``
values per layer (about 12 MiB per layer for batch 16 x 256 positions x 6 heads in bf16), where the flash kernel
keeps ``O(T)``. A pass without gradients keeps one chunk's scores at a time. The ``auto`` attention implementation
(``llm_lab.core.model.attention``) therefore picks this kernel only where it is the faster one and its memory is
bounded: CPU tensors, a plain causal pass, no attention dropout, and for training at most
:data:`MAX_TRAINING_POSITIONS` positions.

Numerics: the products run in the input dtype (bf16 products accumulate in float32 and round their result), the
softmax accumulates in float32 whatever the input dtype (PyTorch's CPU kernel), and the result matches
``scaled_dot_product_attention`` to the rounding of that dtype (``tests/core/model/test_chunked_attention.py``
compares both against a float64 reference).
"""

from __future__ import annotations

import math

import torch

__all__ = ["DEFAULT_CHUNK", "MAX_TRAINING_POSITIONS", "chunked_causal_attention"]

DEFAULT_CHUNK = 128
"""Query rows per chunk. Smaller chunks skip more of the masked square (1/2 + chunk / 2T of it is computed) but
run smaller products; 128 measured best at 256 positions on the development CPU (see the attention benchmark)."""

MAX_TRAINING_POSITIONS = 1024
"""The longest sequence for which ``auto`` attention trains through this kernel: beyond it the saved probabilities
(``n_head * T * (T + chunk) / 2`` values per sequence and layer) outgrow the rest of a layer's activations."""


def _causal_chunk_mask(start: int, end: int, device: torch.device) -> torch.Tensor:
    """``(n, n)`` bool for ``n = end - start``, True above the diagonal: the keys a query of the chunk may not see."""
    n = end - start
    return torch.ones(n, n, dtype=torch.bool, device=device).triu_(1)


def _chunk_bounds(length: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk, length)) for start in range(0, length, chunk)]


class _ChunkedCausalAttention(torch.autograd.Function):
    """The autograd function behind :func:`chunked_causal_attention` (inputs already ``(B * n_head, T, hd)``)."""

    @staticmethod
    def forward(ctx, q, k, v, chunk: int):  # type: ignore[override]
        # q, k, v: (BH, T, hd), contiguous, one dtype. q is pre-scaled by 1 / sqrt(hd).
        BH, T, hd = q.shape
        out = q.new_empty(BH, T, hd)
        keep = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        probs = []
        for start, end in _chunk_bounds(T, chunk):
            scores = torch.bmm(q[:, start:end], k[:, :end].mT)  # (BH, end - start, end)
            scores[:, :, start:end].masked_fill_(_causal_chunk_mask(start, end, q.device), float("-inf"))
            p = torch._softmax(scores, -1, False)  # (BH, end - start, end), float32 accumulation inside
            out[:, start:end] = torch.bmm(p, v[:, :end])  # (BH, end - start, hd)
            if keep:
                probs.append(p)
        if keep:
            ctx.save_for_backward(q, k, v, *probs)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, *probs = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        T = q.shape[1]
        grad_q = torch.empty_like(q)
        grad_k = torch.zeros_like(k)
        grad_v = torch.zeros_like(v)
        for (start, end), p in zip(_chunk_bounds(T, ctx.chunk), probs, strict=True):
            g = grad_out[:, start:end]  # (BH, end - start, hd)
            grad_v[:, :end] += torch.bmm(p.mT, g)  # (BH, end, hd)
            grad_p = torch.bmm(g, v[:, :end].mT)  # (BH, end - start, end)
            grad_s = torch._softmax_backward_data(grad_p, p, -1, p.dtype)
            grad_q[:, start:end] = torch.bmm(grad_s, k[:, :end])  # (BH, end - start, hd), in units of scaled q
            grad_k[:, :end] += torch.bmm(grad_s.mT, q[:, start:end])  # (BH, end, hd); q already carries the scale
        return grad_q, grad_k, grad_v, None


def chunked_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(hd) + causal mask) v`` for ``q``, ``k``, ``v`` of shape ``(B, n_head, T, hd)``.

    Equal in value to ``F.scaled_dot_product_attention(q, k, v, is_causal=True)`` up to the rounding of the dtype,
    differentiable in all three inputs.

    Args:
        q: queries ``(B, n_head, T, hd)``.
        k: keys, the same shape (repeat grouped key/value heads first).
        v: values, the same shape.
        chunk: query rows per chunk (positive).

    Returns:
        ``(B, n_head, T, hd)``.

    Raises:
        ValueError: for mismatched shapes, mismatched dtypes outside autocast, or a ``chunk`` below 1.
    """
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        shapes = [tuple(t.shape) for t in (q, k, v)]
        raise ValueError(f"q, k and v must share one (B, n_head, T, hd) shape, got {shapes}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type):  # compute in the autocast dtype, as scaled_dot_product_attention does
        dtype = torch.get_autocast_dtype(device_type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    elif not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, H, T, hd = q.shape
    # The scale goes into q (a power of two for the usual head sizes, so exact); the products then need no alpha.
    q3 = q.reshape(B * H, T, hd) * (1.0 / math.sqrt(hd))  # (BH, T, hd), a new contiguous tensor
    k3 = k.reshape(B * H, T, hd).contiguous()  # (BH, T, hd)
    v3 = v.reshape(B * H, T, hd).contiguous()  # (BH, T, hd)
    with torch.autocast(device_type, enabled=False):  # the products stay in the dtype chosen above
        out = _ChunkedCausalAttention.apply(q3, k3, v3, chunk)  # (BH, T, hd)
    return out.view(B, H, T, hd)
