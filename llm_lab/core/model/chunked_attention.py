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
values per layer, and the compact copies the products read (each chunk's queries, and the keys and values it
saw): 21 MiB per layer for batch 16 x 256 positions x 6 heads of 64 in bf16 (9 MiB of probabilities, 12 MiB of
copies), where the flash kernel keeps ``O(T)``. A pass without gradients keeps one chunk's scores at a time.
The ``auto`` attention implementation (``llm_lab.core.model.attention``) therefore picks this kernel only for
plain causal CPU passes without attention dropout where it measured faster and its memory is bounded
(:func:`chunked_is_faster`).

Numerics: the products run in the input dtype (bf16 products accumulate in float32 and round their result), the
softmax accumulates in float32 whatever the input dtype (PyTorch's CPU kernel), and the result matches
``scaled_dot_product_attention`` to the rounding of that dtype (``tests/core/model/test_chunked_attention.py``
compares both against a float64 reference).
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

__all__ = [
    "DEFAULT_CHUNK",
    "MAX_TRAINING_POSITIONS",
    "MIN_FP32_TRAINING_POSITIONS",
    "chunked_causal_attention",
    "chunked_is_faster",
    "compute_dtype",
]

DEFAULT_CHUNK = 128
"""Query rows per chunk. Smaller chunks skip more of the masked square (``1/2 + chunk / 2T`` of it is computed) but
run smaller products and copy more key prefixes; on the 10M model's bf16 step (256 positions) 64 and 128 measured
within 0.5% of each other, and 128 keeps the products larger for longer sequences."""

MAX_TRAINING_POSITIONS = 1024
"""The longest sequence for which ``auto`` attention trains through this kernel: beyond it what it saves for the
backward (``n_head * T * (T + chunk) / 2`` probabilities per sequence and layer, plus the copies of queries, keys
and values) outgrows the rest of a layer's activations."""

#: The shortest float32 sequence for which the chunked kernel trains faster than PyTorch's (see the table below).
MIN_FP32_TRAINING_POSITIONS = 256


def chunked_is_faster(dtype: torch.dtype, length: int, training: bool) -> bool:
    """Whether ``auto`` attention should run a plain causal CPU pass of ``length`` positions through this kernel.

    Measured against ``scaled_dot_product_attention`` (``bench attention``-style, one thread, 4096 tokens per
    call, 6 heads of 64; the recipes' shape, 4 heads of 32 at 64 positions, in the first column; speed-up of the
    chunked kernel, forward + backward / forward only under ``no_grad``):

    ========  ============  ===========  ===========  ===========  ===========
    dtype     64 (h32)      128          256          512          1024
    ========  ============  ===========  ===========  ===========  ===========
    bf16      5.7x / 1.3x   3.6x / 1.6x  2.7x / 1.8x  2.8x / 2.1x  2.0x / 1.7x
    float32   0.9x / 0.8x   0.8x / 0.7x  1.1x / 0.9x  1.4x / 1.0x  1.2x / 0.8x
    ========  ============  ===========  ===========  ===========  ===========

    So: bf16 always (training up to :data:`MAX_TRAINING_POSITIONS`, for memory); float32 only for training at
    :data:`MIN_FP32_TRAINING_POSITIONS` to :data:`MAX_TRAINING_POSITIONS` positions; other dtypes never (not
    measured on a CPU).
    """
    if training and length > MAX_TRAINING_POSITIONS:
        return False
    if dtype == torch.bfloat16:
        return True
    return dtype == torch.float32 and training and length >= MIN_FP32_TRAINING_POSITIONS


def _chunk_bounds(length: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk, length)) for start in range(0, length, chunk)]


def _causal_bias(start: int, end: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(end - start, end)``: 0 where query ``start + i`` may see key ``j`` (``j <= start + i``), else ``-inf``."""
    rows = torch.arange(start, end, device=device)[:, None]  # (n, 1)
    keys = torch.arange(end, device=device)[None, :]  # (1, end)
    return torch.zeros(end - start, end, dtype=dtype, device=device).masked_fill_(keys > rows, float("-inf"))


def _empty_like_projection(B: int, H: int, T: int, hd: int, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised ``(B, H, T, hd)`` tensor laid out as ``(B, T, H, hd)`` in memory.

    That is the layout of a projection's output split into heads (``view(B, T, H, hd).transpose(1, 2)``), so
    the caller's ``transpose(1, 2).reshape(B, T, C)`` of an output, and autograd's way back from a gradient to
    the projection, are free views instead of copies.
    """
    return torch.empty_strided((B, H, T, hd), (T * H * hd, hd, H * hd, 1), dtype=like.dtype, device=like.device)


class _ChunkedCausalAttention(torch.autograd.Function):
    """The autograd function behind :func:`chunked_causal_attention`: ``(B, H, T, hd)`` inputs, any layout.

    The batched products need each operand as ``(B * H, rows, hd)`` with one stride per batch entry (PyTorch's
    CPU ``bmm`` copies anything else), so every operand is copied once into that form: each chunk of queries, the
    keys and values (and their prefix up to a chunk's end, when it ends before ``T``), each chunk of the
    gradient. Outputs and gradients are written straight into the projections' layout
    (:func:`_empty_like_projection`). The ``1 / sqrt(hd)`` scale rides inside the products (``alpha``).
    """

    @staticmethod
    def forward(ctx, q, k, v, chunk: int):  # type: ignore[override]
        B, H, T, hd = q.shape
        BH, scale = B * H, 1.0 / math.sqrt(hd)
        keys = k.reshape(BH, T, hd)  # (BH, T, hd); a copy unless k is already laid out so
        values = v.reshape(BH, T, hd)  # (BH, T, hd)
        out = _empty_like_projection(B, H, T, hd, q)
        keep = any(ctx.needs_input_grad[:3])
        saved = []
        for start, end in _chunk_bounds(T, chunk):
            n = end - start
            q_chunk = q[:, :, start:end].reshape(BH, n, hd)  # (BH, n, hd), compact
            k_seen = keys if end == T else keys[:, :end].contiguous()  # (BH, end, hd): the keys these queries see
            v_seen = values if end == T else values[:, :end].contiguous()  # (BH, end, hd)
            bias = _causal_bias(start, end, q.dtype, q.device)  # (n, end): -inf above the diagonal
            scores = torch.baddbmm(bias, q_chunk, k_seen.mT, alpha=scale)  # (BH, n, end): bias + q k^T / sqrt(hd)
            probs = torch._softmax(scores, -1, False)  # (BH, n, end), float32 accumulation inside
            out[:, :, start:end] = torch.bmm(probs, v_seen).view(B, H, n, hd)  # (B, H, n, hd)
            if keep:
                saved += [q_chunk, k_seen, v_seen, probs]
        if keep:
            ctx.save_for_backward(*saved)
        ctx.chunk = chunk
        return out

    @staticmethod
    @once_differentiable  # the saved probabilities carry no graph: a second derivative would be silently zero
    def backward(ctx, grad_out):  # type: ignore[override]
        B, H, T, hd = grad_out.shape
        BH, scale = B * H, 1.0 / math.sqrt(hd)
        zero = grad_out.new_zeros(())  # the ignored ``input`` of a beta=0 baddbmm
        grad_q = _empty_like_projection(B, H, T, hd, grad_out)
        grad_k = _empty_like_projection(B, H, T, hd, grad_out)
        grad_v = _empty_like_projection(B, H, T, hd, grad_out)
        saved = ctx.saved_tensors
        chunks = list(zip(_chunk_bounds(T, ctx.chunk), range(0, len(saved), 4), strict=True))
        # The last chunk sees every key, so it writes the key and value gradients whole; the others add to them.
        for (start, end), i in reversed(chunks):
            q_chunk, k_seen, v_seen, probs = saved[i : i + 4]
            n = end - start
            g = grad_out[:, :, start:end].reshape(BH, n, hd)  # (BH, n, hd), compact
            grad_v_part = torch.bmm(probs.mT, g).view(B, H, end, hd)  # (B, H, end, hd)
            grad_probs = torch.bmm(g, v_seen.mT)  # (BH, n, end)
            grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)  # (BH, n, end)
            # The scores were q k^T / sqrt(hd): both gradients carry the scale (applied inside the products).
            grad_k_part = torch.baddbmm(zero, grad_scores.mT, q_chunk, beta=0, alpha=scale).view(B, H, end, hd)
            grad_q[:, :, start:end] = torch.baddbmm(zero, grad_scores, k_seen, beta=0, alpha=scale).view(B, H, n, hd)
            if end == T:
                grad_k.copy_(grad_k_part)
                grad_v.copy_(grad_v_part)
            else:
                grad_k[:, :, :end] += grad_k_part
                grad_v[:, :, :end] += grad_v_part
        return grad_q, grad_k, grad_v, None


_AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype an attention op computes ``t`` in: autocast's dtype where autocast is on for ``t``'s device and
    would cast it (never float64, as for every autocast op), else ``t``'s own."""
    device_type = t.device.type
    if torch.is_autocast_enabled(device_type) and t.dtype in _AUTOCAST_ELIGIBLE:
        return torch.get_autocast_dtype(device_type)
    return t.dtype


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
        ValueError: for mismatched shapes, mismatched dtypes (after autocast's casts), or a ``chunk`` below 1.
    """
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        shapes = [tuple(t.shape) for t in (q, k, v)]
        raise ValueError(f"q, k and v must share one (B, n_head, T, hd) shape, got {shapes}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    q, k, v = (t.to(compute_dtype(t)) for t in (q, k, v))  # autocast's casts, as scaled_dot_product_attention's
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    with torch.autocast(q.device.type, enabled=False):  # the products stay in the dtype chosen above
        return _ChunkedCausalAttention.apply(q, k, v, chunk)  # (B, n_head, T, hd)
