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
rebuilt when the parameters it was made from are replaced (checked by identity) or changed in place through
autograd-visible operations (an optimizer step, ``load_state_dict``), which bump the tensor's version counter.
Writes through ``param.data`` bump nothing and cannot be seen: call :meth:`DecodeLinears.release` after them.
Decode steps take the plain layers (correct, just not faster) when a fused layer has forward hooks, for a
``torch.compile`` wrapper, and for parameters created under ``torch.inference_mode`` (no version counter).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from llm_lab.core.model.attention import CausalSelfAttention
from llm_lab.core.model.mlp import SwiGLUMLP

__all__ = ["FUSED_PROJECTIONS", "MAX_ROWS", "MIN_BLOCK_COLUMNS", "DecodeLinears"]

#: Inputs with at most this many rows (batch x new tokens) take the fast path. From about batch 8 the product is a
#: real matrix multiply and both layouts ran alike (within 5%), so prefill and large batches keep ``nn.Linear``.
MAX_ROWS = 4

#: With several threads a weight is cut into this many columns or more per block, one block per thread: a
#: matrix-vector product runs on one thread, a batch of them (``bmm``) on all.
MIN_BLOCK_COLUMNS = 128

#: Modules whose method applies several ``nn.Linear`` children to one input: the method, and those children in
#: output order. A subclass that overrides the method keeps its own.
FUSED_PROJECTIONS: dict[type[nn.Module], tuple[str, tuple[str, ...]]] = {
    CausalSelfAttention: ("project_qkv", ("q_proj", "k_proj", "v_proj")),
    SwiGLUMLP: ("project_gate_up", ("gate_proj", "up_proj")),
}


class _Copy(NamedTuple):
    sources: tuple[weakref.ref, ...]  # the parameters it was made from (weights and biases, in order) ...
    versions: tuple[int, ...]  # ... and their version counters then
    parts: int  # column blocks (1: a plain (in, out) matrix)
    weight: torch.Tensor  # (in, out) or (parts, in, width)
    bias: torch.Tensor | None  # (out,) or (parts, 1, width)


# One copy per owner module (the fused module, or the lone layer). Weak keys: a module that goes away takes its
# copy along.
_COPIES: weakref.WeakKeyDictionary[nn.Module, _Copy] = weakref.WeakKeyDictionary()


def _split_count(columns: int) -> int:
    """How many column blocks to cut a weight into: one per thread, each at least :data:`MIN_BLOCK_COLUMNS`."""
    return max(1, min(torch.get_num_threads(), columns // MIN_BLOCK_COLUMNS))


def _is_current(copy: _Copy | None, params: list[torch.Tensor], versions: tuple[int, ...], parts: int) -> bool:
    """Was ``copy`` made from exactly these tensors, unchanged since, for this many blocks?"""
    return (
        copy is not None
        and copy.parts == parts
        and copy.versions == versions
        and len(copy.sources) == len(params)
        and all(ref() is p for ref, p in zip(copy.sources, params, strict=True))
    )


def _make_copy(layers: list[nn.Linear], params: list[torch.Tensor], versions: tuple[int, ...], parts: int) -> _Copy:
    with torch.no_grad():
        weight = torch.cat([layer.weight for layer in layers]).t()  # (in, total)
        bias = None if layers[0].bias is None else torch.cat([layer.bias for layer in layers])  # (total,)
        if parts == 1:
            weight = weight.contiguous()
        else:
            # Column blocks, zero-padded to equal width: (parts, in, width), and the bias as (parts, 1, width).
            total = weight.shape[1]
            width = -(-total // parts)
            padded = weight.new_zeros(weight.shape[0], parts * width)
            padded[:, :total] = weight
            weight = padded.view(-1, parts, width).transpose(0, 1).contiguous()
            if bias is not None:
                bias = torch.cat([bias, bias.new_zeros(parts * width - total)]).view(parts, 1, width)
    return _Copy(tuple(weakref.ref(p) for p in params), versions, parts, weight, bias)


def _fast_product(owner: nn.Module, names: tuple[str, ...] | None, slow: Callable) -> Callable:
    """A replacement for ``slow(x)``: ``owner(x)`` for a lone layer (``names`` None), else the tuple of the
    ``owner.<name>(x)``. The layers and parameters are looked up on every call, so replacing them is seen."""

    def forward(x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        rows = x.numel() // max(x.shape[-1], 1)
        if rows > MAX_ROWS or x.device.type != "cpu" or torch.compiler.is_compiling():
            return slow(x)
        layers = [owner] if names is None else [getattr(owner, name) for name in names]
        if names is not None and any(
            type(m) is not nn.Linear or m._forward_hooks or m._forward_pre_hooks for m in layers
        ):
            return slow(x)  # a fused product would skip a layer's hooks (or a replaced layer's own forward)
        params = [p for layer in layers for p in (layer.weight, layer.bias) if p is not None]
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            return slow(x)  # autograd must see the real weights
        try:
            versions = tuple(p._version for p in params)
        except RuntimeError:  # inference-mode parameters have no version counter: a change could not be seen
            return slow(x)
        sizes = [layer.out_features for layer in layers]
        total = sum(sizes)
        parts = _split_count(total)
        copy = _COPIES.get(owner)
        if not _is_current(copy, params, versions, parts):
            copy = _COPIES[owner] = _make_copy(layers, params, versions, parts)
        weight, bias = copy.weight, copy.bias
        flat = x.reshape(rows, x.shape[-1])  # (rows, in)
        if parts == 1:  # weight (in, total)
            out = flat @ weight if bias is None else torch.addmm(bias, flat, weight)  # (rows, total)
        else:  # weight (parts, in, width): one block per thread
            stacked = flat.expand(parts, *flat.shape)  # (parts, rows, in)
            out = torch.bmm(stacked, weight) if bias is None else torch.baddbmm(bias, stacked, weight)
            out = out.transpose(0, 1).reshape(rows, -1)[:, :total]  # (rows, total)
        if names is None:
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
        self._swaps: list[tuple[nn.Module, str, Callable, int]] = []  # (module, method, replacement, input width)
        self._active: list[tuple[nn.Module, str]] = []
        first = next(model.parameters(), None)
        if first is None or first.device.type != "cpu":
            DecodeLinears.release(model)  # copies made before a move to another device would only hold memory
            return
        if hasattr(model, "_orig_mod"):
            return  # a torch.compile wrapper: swapped methods would only make it recompile
        fused: set[nn.Module] = set()
        for module in model.modules():
            for base, (method, names) in FUSED_PROJECTIONS.items():
                if not isinstance(module, base) or getattr(type(module), method) is not getattr(base, method):
                    continue
                layers = [getattr(module, name) for name in names]
                if all(type(m) is nn.Linear for m in layers) and len({m.bias is None for m in layers}) == 1:
                    fast = _fast_product(module, names, getattr(module, method))
                    self._swaps.append((module, method, fast, layers[0].in_features))
                    fused.update(layers)
        for module in model.modules():
            if type(module) is nn.Linear and module not in fused:
                self._swaps.append((module, "forward", _fast_product(module, None, module.forward), module.in_features))

    def products(self) -> list[tuple[Callable[[torch.Tensor], Any], int]]:
        """Each replacement product (callable on its own, inside the block or not) and its input width.

        One decode step runs each of them once; the decoding benchmark times them alone as a bound.
        """
        return [(fast, width) for _, _, fast, width in self._swaps]

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
        for module, method, fast, _ in self._swaps:
            if method not in vars(module):  # not replaced already (by an enclosing block or by the user)
                setattr(module, method, fast)
                self._active.append((module, method))
        return self

    def __exit__(self, *exc: object) -> None:
        for module, method in self._active:
            delattr(module, method)
        self._active = []
