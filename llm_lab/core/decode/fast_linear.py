"""A decode-only copy of a model whose linear layers stream their weights fast on a CPU: :func:`prepare_for_decode`.

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

:func:`prepare_for_decode` turns a model into a copy built for that, once: every ``nn.Linear`` becomes a
:class:`DecodeLinear` holding its weight as an ``(in, out)`` matrix (cut into column blocks when torch has several
threads), and the projections that read the same input become one :class:`DecodeLinear` of several outputs.
Which projections those are is declared by the module classes themselves, never found by name: a class with a
``fuse_for_decode`` attribute (the attention's ``("q_proj", "k_proj", "v_proj")``, the gated MLP's
``("gate_proj", "up_proj")``) names its projections in output order and computes them through its ``fused``
child when that is set. Results equal the plain layers up to floating-point summation order.

Why a copy, and a snapshot. The decode layout is derived from the weights, so it goes stale when they change.
Torch offers no public way to see an in-place change (an optimizer step, ``load_state_dict``, ``p.mul_()``), so
instead of watching the model the copy is a snapshot with a clear life: it is made from the weights as they are
when :func:`prepare_for_decode` is called and never changes afterwards. It shares nothing with the source model
(training the source cannot leave it half old, half new) and cannot be trained itself: its decode weights are
buffers, every parameter is frozen, and ``train()`` on it raises. After training or loading new weights, prepare
again. :func:`~llm_lab.core.decode.generate` and :func:`~llm_lab.core.decode.stream` do exactly that on every call
that pays for it (a CPU model and at least :data:`MIN_NEW_TOKENS` new tokens, see :func:`pays_to_prepare`), so
they always decode the current weights; a caller that decodes many times with fixed weights (the server, the
benchmark, a notebook) prepares once and passes the copy, which they use as it is. Why not one copy per model,
kept and rebuilt when stale: noticing an in-place change needs the tensors' private version counters (what the
earlier implementation, which swapped methods onto the layers for each step, read), and a stale copy that goes
unnoticed gives wrong text silently. The copy costs one more copy of the model's weights in memory while it
lives, and forward hooks on the model's linear layers do not run in it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "MIN_BLOCK_COLUMNS",
    "MIN_NEW_TOKENS",
    "DecodeLinear",
    "is_decode_copy",
    "pays_to_prepare",
    "prepare_for_decode",
]

#: A generation of fewer new tokens than this decodes with the model as it is. Building the copy reads and rewrites
#: every weight once: for the 6 x 384 model with GPT-2's vocabulary it took 0.15 s on the development machine (one
#: thread, load about 1), what about 28 one-row decode steps save (13.1 ms a step through ``nn.Linear``, 7.8 ms
#: through the copy); twice that many steps leaves a clear gain. From batch 1 to 8 and for a 1024-token prefill the
#: copy was never the slower one.
MIN_NEW_TOKENS = 64

#: With several threads a weight is cut into this many columns or more per block, one block per thread: a
#: matrix-vector product runs on one thread, a batch of them (``bmm``) on all.
MIN_BLOCK_COLUMNS = 128


def _split_count(columns: int, device: torch.device) -> int:
    """How many column blocks to cut a weight into: one per CPU thread, each at least :data:`MIN_BLOCK_COLUMNS`."""
    if device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), columns // MIN_BLOCK_COLUMNS))


class DecodeLinear(nn.Module):
    """One or several linear layers that read the same input, as one product over an ``(in, out)`` weight copy.

    ``forward(x)`` gives what the layers give (``x @ W.T + b`` each, up to summation order): one tensor for one
    layer, a tuple in the layers' order for several. The weights are buffers (a copy for inference, not
    parameters to train), laid out as ``(in, out)``, or on a CPU with several threads as ``(parts, in, width)``
    column blocks, zero-padded to equal width, that one ``bmm`` runs on all threads.

    Args:
        layers: exact ``nn.Linear`` layers with the same input width, all with a bias or all without.

    Raises:
        ValueError: no layers, a subclass of ``nn.Linear`` (its own forward would be skipped), different input
            widths, or a mix of layers with and without a bias.
    """

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        if not layers or any(type(layer) is not nn.Linear for layer in layers):
            raise ValueError("DecodeLinear needs one or more nn.Linear layers (not subclasses, whose forward differs)")
        if len({layer.in_features for layer in layers}) != 1 or len({layer.bias is None for layer in layers}) != 1:
            raise ValueError(
                "layers fused into one DecodeLinear must share their input width and all have a bias or none"
            )
        self.in_features = layers[0].in_features
        self.sizes = tuple(layer.out_features for layer in layers)
        total = sum(self.sizes)
        with torch.no_grad():
            weights = [layer.weight for layer in layers]
            weight = (weights[0] if len(weights) == 1 else torch.cat(weights)).t()  # (in, total)
            bias = None if layers[0].bias is None else torch.cat([layer.bias for layer in layers])  # (total,), a copy
            parts = _split_count(total, weight.device)
            if parts == 1:
                weight = weight.clone(memory_format=torch.contiguous_format)  # always a copy, never a view
            else:
                # Column blocks, zero-padded to equal width: (parts, in, width), and the bias as (parts, 1, width).
                width = -(-total // parts)
                padded = weight.new_zeros(weight.shape[0], parts * width)
                padded[:, :total] = weight
                weight = padded.view(-1, parts, width).transpose(0, 1).contiguous()
                if bias is not None:
                    bias = torch.cat([bias, bias.new_zeros(parts * width - total)]).view(parts, 1, width)
        # Not called weight/bias: code that reads a layer's ``weight`` expects ``(out, in)`` and must fail here, not
        # compute with a transposed square matrix.
        self.register_buffer("packed_weight", weight.detach(), persistent=False)
        self.register_buffer("packed_bias", None if bias is None else bias.detach(), persistent=False)
        self.train(False)

    @property
    def parts(self) -> int:
        """Column blocks the weight is cut into (1: a plain ``(in, out)`` matrix)."""
        return 1 if self.packed_weight.dim() == 2 else self.packed_weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        weight, bias, total = self.packed_weight, self.packed_bias, sum(self.sizes)
        flat = x.reshape(-1, self.in_features)  # (rows, in)
        if weight.dim() == 2:  # (in, total)
            out = flat @ weight if bias is None else torch.addmm(bias, flat, weight)  # (rows, total)
        else:  # (parts, in, width): one block per thread
            stacked = flat.expand(weight.shape[0], *flat.shape)  # (parts, rows, in)
            out = torch.bmm(stacked, weight) if bias is None else torch.baddbmm(bias, stacked, weight)
            out = out.transpose(0, 1).reshape(flat.shape[0], -1)[:, :total]  # (rows, total)
        if len(self.sizes) == 1:
            return out.view(*x.shape[:-1], total)
        return tuple(part.view(*x.shape[:-1], part.shape[-1]) for part in out.split(self.sizes, dim=-1))

    def train(self, mode: bool = True) -> DecodeLinear:
        """Only ``train(False)`` is allowed: a decode copy is a snapshot, training it would change nothing real."""
        if mode:
            raise ValueError(
                "this model is a decode-only copy made by prepare_for_decode and cannot be trained; train the "
                "original model and call prepare_for_decode again"
            )
        return super().train(False)

    def extra_repr(self) -> str:
        bias = self.packed_bias is not None
        return f"in_features={self.in_features}, out_features={self.sizes}, bias={bias}, parts={self.parts}"


def _fusions(model: nn.Module) -> dict[nn.Module, tuple[str, ...]]:
    """The modules whose declared ``fuse_for_decode`` projections can become one product, with those names."""
    found = {}
    for module in model.modules():
        names = getattr(type(module), "fuse_for_decode", ())
        if not names:
            continue
        layers = [getattr(module, name, None) for name in names]
        if (
            all(type(layer) is nn.Linear for layer in layers)
            and len({layer.in_features for layer in layers}) == 1
            and len({layer.bias is None for layer in layers}) == 1
        ):
            found[module] = tuple(names)
    return found


def prepare_for_decode(model: nn.Module) -> nn.Module:
    """A decode-only copy of ``model`` with its linear layers as :class:`DecodeLinear` (see the module docs).

    Every exact ``nn.Linear`` is replaced (subclasses keep their own forward and are copied as they are), and the
    projections a module declares in ``fuse_for_decode`` become that module's ``fused`` product. Everything else
    is copied unchanged. The copy is in eval mode, every parameter is frozen and ``train()`` raises; it does not
    follow later changes to ``model``: prepare again after training or loading weights.

    Idempotent: a model without an exact ``nn.Linear`` left (a prepared copy, or a model that never had one) is
    returned as it is, not copied.

    Args:
        model: a ``MiniGPT`` or any module (on any device and dtype; the copy stays there).

    Returns:
        The decode copy, or ``model`` itself when it has nothing to replace.

    Example::

        fast = prepare_for_decode(model)  # once; again after the weights change
        out = generate(fast, prompt_ids, 200, temperature=0.8, seed=0)
    """
    if type(model) is nn.Linear:  # a bare layer: it is its own (only) product
        return DecodeLinear([model])
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    if not linears:
        return model
    if not _plain_parameters(model):
        kinds = sorted({type(p).__name__ for p in model.parameters() if type(p) is not nn.Parameter})
        raise ValueError(
            f"prepare_for_decode needs a model whose parameters are plain tensors, got {', '.join(kinds)} (a "
            "sharded or otherwise wrapped model); decode with the model loaded whole"
        )
    fusions = _fusions(model)
    # Deep-copy everything but the linear layers (they are rebuilt in the decode layout below, not copied twice):
    # the memo makes each of them copy to None, a free slot in its parent.
    decode = copy.deepcopy(model, {id(layer): None for layer in linears})
    for name, source in model.named_modules():
        if type(source) is nn.Linear:
            continue  # a slot filled from its parent
        target = decode.get_submodule(name)
        names = fusions.get(source, ())
        if names:
            target.fused = DecodeLinear([getattr(source, n) for n in names])
            for n in names:
                delattr(target, n)  # the fused product replaces them; a stray use fails loudly
        for child_name, child in source.named_children():
            if type(child) is nn.Linear and child_name not in names:
                setattr(target, child_name, DecodeLinear([child]))
    decode.requires_grad_(False)
    # ``train()`` on the copy raises in its first DecodeLinear, after torch has already switched the modules before
    # it to training mode; this hook keeps such a half-switched copy from decoding with dropout on.
    decode.register_forward_pre_hook(_refuse_training_mode)
    return decode.eval()


def is_decode_copy(model: nn.Module) -> bool:
    """Whether ``model`` holds :class:`DecodeLinear` layers (a :func:`prepare_for_decode` copy or part of one)."""
    return any(isinstance(m, DecodeLinear) for m in model.modules())


def _refuse_training_mode(module: nn.Module, args: tuple) -> None:
    if any(m.training for m in module.modules()):
        raise ValueError(
            "this decode-only copy (prepare_for_decode) is in training mode; call .eval() on it, or train the model "
            "it was prepared from and prepare again"
        )


def _plain_parameters(model: nn.Module) -> bool:
    """Whether every parameter is an ordinary tensor (not a DTensor shard of FSDP, say), so copying it copies it all."""
    return all(type(p) is nn.Parameter for p in model.parameters())


def pays_to_prepare(model: nn.Module, new_tokens: int | None = None) -> bool:
    """Whether a generation of ``new_tokens`` steps gains from :func:`prepare_for_decode`.

    Only on a CPU (the layouts are about a CPU's BLAS; elsewhere the model runs as it is) and for at least
    :data:`MIN_NEW_TOKENS` steps, so that building the copy costs less than the steps save. ``new_tokens=None``
    asks about a copy kept for many generations, whose cost is paid once. Never for a model whose parameters are
    not plain tensors (an FSDP-sharded model decodes as it is).
    """
    first = next(model.parameters(), None)
    on_cpu = first is not None and first.device.type == "cpu" and _plain_parameters(model)
    return on_cpu and (new_tokens is None or new_tokens >= MIN_NEW_TOKENS)
