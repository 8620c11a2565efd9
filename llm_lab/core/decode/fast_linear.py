"""Decode-step linear layers that stream their weights fast on a CPU.

A decode step feeds one row per sequence through every weight matrix, so at small batch each ``nn.Linear`` is a
matrix-vector product whose speed is how fast the weight streams from memory. Three things decide that on a
CPU, measured on the development machine (2-core AMD EPYC, weights not in cache):

* Layout. ``nn.Linear`` keeps ``W`` as ``(out, in)`` and computes ``x @ W.T``; for one row the BLAS runs a
  transposed matrix-vector product that read about 9 GB/s, while the same product over a contiguous
  ``(in, out)`` copy read about 20 GB/s. With GPT-2's vocabulary the output head alone is 77 MB of fp32 per token.
* Size. A small matrix is dominated by the start-up of each product: three 384 x 384 products (q, k, v) read
  about 4 GB/s, one 384 x 1152 product of the three stacked about 9 GB/s.
* Threads. The BLAS runs a matrix-vector product on one thread however many there are; cut into one column
  block per thread and run as one batched product (``bmm``), it uses them all. With two threads all the
  products of a 6 x 384 model with GPT-2's vocabulary took 5.1 ms per token instead of 7.3 ms.

:class:`DecodeLinears` therefore, for the duration of one forward call, gives every ``nn.Linear`` of the model a
forward that multiplies inputs of at most :data:`MAX_ROWS` rows by a cached ``(in, out)`` copy of its weight
(cut into column blocks when torch has several threads), and fuses the projections that read the same input
(the attention's ``project_qkv``, a gated MLP's ``project_gate_up``) into one product. Everything else (more
rows, autograd, another device, a subclass of ``nn.Linear``) goes through the model's own code. Results equal
the plain layers up to floating-point summation order.

The copies cost one more copy of the linear weights in memory. They are kept between calls, so a server does not
rebuild them on every request, and freed with the layer (or at once by :meth:`DecodeLinears.release`). A copy is
rebuilt when a weight it was made from changes: an in-place update (an optimizer step) bumps the tensor's version
counter, and new weights have another address.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["FUSED_PROJECTIONS", "MAX_ROWS", "MIN_BLOCK_COLUMNS", "DecodeLinears"]

#: Inputs with at most this many rows (batch x new tokens) take the fast path. From about batch 8 the product is a
#: real matrix multiply and both layouts ran alike (within 5%), so prefill and large batches keep ``nn.Linear``.
MAX_ROWS = 4

#: With several threads a weight is cut into this many columns or more per block, one block per thread: a
#: matrix-vector product runs on one thread, a batch of them (``bmm``) on all.
MIN_BLOCK_COLUMNS = 128

#: Methods that apply several ``nn.Linear`` children to one input, and those children in output order.
FUSED_PROJECTIONS: dict[str, tuple[str, ...]] = {
    "project_qkv": ("q_proj", "k_proj", "v_proj"),
    "project_gate_up": ("gate_proj", "up_proj"),
}

# Per owner module: (what the copy was made from, weight copy (in, out), bias or None). Weak keys: a module that
# goes away takes its copy along.
_COPIES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, torch.Tensor, torch.Tensor | None]] = (
    weakref.WeakKeyDictionary()
)


def _split_count(columns: int) -> int:
    """How many column blocks to cut a weight into: one per thread, each at least :data:`MIN_BLOCK_COLUMNS`."""
    return max(1, min(torch.get_num_threads(), columns // MIN_BLOCK_COLUMNS))


def _state(tensors: Sequence[torch.Tensor]) -> tuple | None:
    """What identifies the tensors' current values (address and version), or ``None`` if a change is invisible."""
    try:
        return tuple((t.data_ptr(), t._version) for t in tensors)
    except RuntimeError:  # an inference-mode tensor has no version counter
        return None


def _fast_product(owner: nn.Module, layers: Sequence[nn.Linear], slow: Callable) -> Callable:
    """A replacement for ``slow(x)``, which returns ``tuple(layer(x) for layer in layers)`` (or one tensor)."""
    sizes = [layer.out_features for layer in layers]
    single = len(layers) == 1
    params = [p for layer in layers for p in (layer.weight, layer.bias) if p is not None]
    trainable = any(p.requires_grad for p in params)
    total = sum(sizes)

    def copy() -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The weight copy and bias for the current thread count, rebuilt when a parameter changed."""
        state = _state(params)
        if state is None:
            return None
        parts = _split_count(total)
        state = (*state, parts)
        cached = _COPIES.get(owner)
        if cached is None or cached[0] != state:
            with torch.no_grad():
                weight = torch.cat([layer.weight for layer in layers]).t()  # (in, total)
                bias = None if layers[0].bias is None else torch.cat([layer.bias for layer in layers])  # (total,)
                if parts == 1:
                    weight = weight.contiguous()
                else:
                    # Column blocks, zero-padded to equal width: (parts, in, width), and the bias as (parts, 1, width).
                    width = -(-total // parts)
                    padded = weight.new_zeros(weight.shape[0], parts * width)
                    padded[:, :total] = weight
                    weight = padded.view(-1, parts, width).transpose(0, 1).contiguous()
                    if bias is not None:
                        bias = torch.cat([bias, bias.new_zeros(parts * width - total)]).view(parts, 1, width)
            cached = (state, weight, bias)
            _COPIES[owner] = cached
        return cached[1], cached[2]

    def forward(x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        rows = x.numel() // max(x.shape[-1], 1)
        if rows > MAX_ROWS or x.device.type != "cpu" or (torch.is_grad_enabled() and (trainable or x.requires_grad)):
            return slow(x)
        fast = copy()
        if fast is None:
            return slow(x)
        weight, bias = fast
        flat = x.reshape(rows, x.shape[-1])  # (rows, in)
        if weight.dim() == 2:  # (in, total)
            out = flat @ weight if bias is None else torch.addmm(bias, flat, weight)  # (rows, total)
        else:  # (parts, in, width): one block per thread
            stacked = flat.expand(weight.shape[0], *flat.shape)  # (parts, rows, in)
            out = torch.bmm(stacked, weight) if bias is None else torch.baddbmm(bias, stacked, weight)
            out = out.transpose(0, 1).reshape(rows, -1)[:, :total]  # (rows, total)
        if single:
            return out.view(*x.shape[:-1], total)
        return tuple(part.view(*x.shape[:-1], size) for part, size in zip(out.split(sizes, dim=-1), sizes, strict=True))

    return forward


class DecodeLinears:
    """Context manager: within it, few-row inputs of the model's linear layers use fast fused ``(in, out)`` copies.

    Build it once per generation (it finds the layers then) and enter it around each decode-step forward; entering
    and leaving only swap a few attributes. On a model that is not on the CPU it changes nothing. Only exact
    ``nn.Linear`` layers take part, and every replaced method is given back on exit.

    Example::

        fast = DecodeLinears(model)
        with fast:
            logits, cache = model(next_ids, past_key_values=cache)
    """

    def __init__(self, model: nn.Module) -> None:
        self._swaps: list[tuple[nn.Module, str, Callable]] = []
        self._widths: list[int] = []  # input width of each swap's product
        self._active: list[tuple[nn.Module, str]] = []
        first = next(model.parameters(), None)
        if first is None or first.device.type != "cpu":
            return
        fused: set[nn.Linear] = set()
        for module in model.modules():
            for method, names in FUSED_PROJECTIONS.items():
                layers = [getattr(module, name, None) for name in names]
                if (
                    hasattr(module, method)
                    and all(type(m) is nn.Linear for m in layers)
                    and len({m.bias is None for m in layers}) == 1  # all with a bias or all without
                ):
                    self._swaps.append((module, method, _fast_product(module, layers, getattr(module, method))))
                    self._widths.append(layers[0].in_features)
                    fused.update(layers)
        for module in model.modules():
            if type(module) is nn.Linear and module not in fused:
                self._swaps.append((module, "forward", _fast_product(module, [module], module.forward)))
                self._widths.append(module.in_features)

    def products(self) -> list[tuple[Callable[[torch.Tensor], Any], int]]:
        """Each replacement product (callable on its own, inside the block or not) and its input width.

        One decode step runs each of them once; the decoding benchmark times them alone as a bound.
        """
        return [(fast, width) for (_, _, fast), width in zip(self._swaps, self._widths, strict=True)]

    @staticmethod
    def release(model: nn.Module) -> int:
        """Drop the cached weight copies of ``model``'s layers now (they are rebuilt when next needed).

        Returns:
            How many copies were dropped.
        """
        owners = [m for m in model.modules() if m in _COPIES]
        for owner in owners:
            del _COPIES[owner]
        return len(owners)

    def __enter__(self) -> DecodeLinears:
        for module, method, fast in self._swaps:
            if method not in vars(module):  # not replaced already (by an enclosing block or by the user)
                setattr(module, method, fast)
                self._active.append((module, method))
        return self

    def __exit__(self, *exc: object) -> None:
        for module, method in self._active:
            delattr(module, method)
        self._active = []
