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

Lower precision (``dtype``). The copy can also hold its weights in fewer bytes, which is what a weight-read-bound
step pays for. Each choice is a small class in :data:`DECODE_DTYPES`, the only list of their names:

* ``fp32`` (:class:`Float32Weights`): the layout above; results equal the plain layers up to summation order.
* ``bf16`` (:class:`BFloat16Weights`): weights rounded to bfloat16 (half the bytes), products through
  ``torch.nn.functional.linear`` in bfloat16. Fast only where the CPU has bfloat16 units (``avx512_bf16``,
  ``amx_bf16``); on an AVX2-only CPU torch converts every element and a step is slower than fp32.
* ``int8`` (:class:`Int8Weights`): weight-only int8 with one scale per output channel (``absmax / 127``), a
  quarter of fp32's bytes. Two kernels that the installed torch provides multiply by it (no C extension of ours):
  where torch has fbgemm (x86 CPUs with AVX2 or AVX-512), :class:`FbgemmInt8Weights`, fbgemm's integer
  product (``torch.fbgemm_linear_int8_weight``), which rounds each input row to about 7 bits and computes in
  integers; elsewhere ``torch.ops.aten._weight_int8pack_mm``, which dequantises inside the matmul and wants
  bfloat16 inputs (several times slower with float32 ones), so the row is rounded to bfloat16 on the way in. On
  the AVX2 development machine GPT-2's output head took 1.7 ms through fbgemm, 5.5 ms through
  ``_weight_int8pack_mm`` and 3.7 ms in fp32 (one thread): without bfloat16 units the second is slower than fp32.
  ``torch._int_mm`` (int8 x int8) was slower still, and the ``torch.ao`` dynamic-quantisation operators quantise
  a whole batch over one range (a row's result would depend on its neighbours).

``auto`` (:func:`resolve_decode_dtype`) picks ``int8`` on a CPU where one of those kernels beats fp32 (fbgemm, or
``_weight_int8pack_mm`` on a CPU with bfloat16 units) and ``fp32`` anywhere else; it never picks ``bf16`` (its
only gain is on CPUs with bfloat16 units, where int8 reads half as much again). Embeddings, norms and attention
stay in float32 in every case: they read one row per token.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn

__all__ = [
    "DECODE_DTYPES",
    "ELEMENTWISE_GRAIN",
    "MIN_BLOCK_COLUMNS",
    "MIN_NEW_TOKENS",
    "MIN_PARALLEL_WEIGHTS",
    "VECTOR_STEP",
    "BFloat16Weights",
    "DecodeLinear",
    "DecodeWeights",
    "FbgemmInt8Weights",
    "Float32Weights",
    "Int8Weights",
    "fbgemm_int8_available",
    "is_decode_copy",
    "model_in_dtype",
    "pays_to_prepare",
    "prepare_for_decode",
    "resolve_decode_dtype",
    "rows_independent",
]

#: A generation of fewer new tokens than this decodes with the model as it is. Building the copy reads and rewrites
#: every weight once: for the 6 x 384 model with GPT-2's vocabulary it took 0.15 s on the development machine (one
#: thread, load about 1), what about 28 one-row decode steps save (13.1 ms a step through ``nn.Linear``, 7.8 ms
#: through the copy); twice that many steps leaves a clear gain. From batch 1 to 8 and for a 1024-token prefill the
#: copy was never the slower one.
MIN_NEW_TOKENS = 64

#: An fbgemm int8 product of fewer weights than this runs on one thread however many torch has. fbgemm splits
#: every product across all threads, and each split ends in a wait for the slowest thread: for the 0.1-0.6 M
#: weights of a 6 x 384 model's layers that wait costs more than the split saves, and on a machine whose cores are
#: busy with other work it cost 10 ms and more per product (2 threads, load about 12: the 24 layer products of one
#: step took 38.6 ms split, 4.2 ms on one thread). The output head (19 M weights) is split.
MIN_PARALLEL_WEIGHTS = 1 << 20

#: With several threads a weight is cut into this many columns or more per block, one block per thread: a
#: matrix-vector product runs on one thread, a batch of them (``bmm``) on all.
MIN_BLOCK_COLUMNS = 128


def _split_count(columns: int, device: torch.device) -> int:
    """How many column blocks to cut a weight into: one per CPU thread, each at least :data:`MIN_BLOCK_COLUMNS`."""
    if device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), columns // MIN_BLOCK_COLUMNS))


class DecodeWeights:
    """How a :class:`DecodeLinear` stores its weight and multiplies by it: one subclass per decode dtype.

    A subclass names itself (``name``, the key in :data:`DECODE_DTYPES`), says how many bytes a weight takes
    (``bytes_per_weight``, what a weight-read-bound step reads) and implements :meth:`pack` (once, from the stacked
    ``(out, in)`` weights) and the three parts of a product (every step): :meth:`prepare` puts the input rows in the
    form the kernel takes, :meth:`kernel` is the one call that reads the weights, :meth:`finish` turns its result
    into ``flat @ W.T + b``. Adding a dtype is one class here and one registry entry.
    """

    name: ClassVar[str]
    bytes_per_weight: ClassVar[float]
    #: Whether a row's result is bit for bit the same whatever rows are beside it (any number, any values). Not
    #: true of a floating-point matrix product in general: the BLAS rounds a row of an 8-row product differently
    #: from a 1-row one.
    rows_independent: ClassVar[bool] = False

    @classmethod
    def implementation(cls, device: torch.device) -> type[DecodeWeights]:
        """The class that packs and multiplies this dtype on ``device`` (itself, unless a faster kernel exists)."""
        return cls

    @classmethod
    def pack(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> dict[str, object]:
        """What to keep, from ``weight`` ``(out, in)`` and ``bias`` ``(out,)`` or ``None`` (both copies).

        Tensors (or ``None``) become buffers of the layer; anything else an attribute.
        """
        raise NotImplementedError

    @classmethod
    def matmul(cls, layer: DecodeLinear, flat: torch.Tensor) -> torch.Tensor:
        """``flat @ W.T + b`` for ``flat`` ``(rows, in)``: ``(rows, out)`` in ``flat``'s dtype."""
        x, state = cls.prepare(layer, flat)
        return cls.finish(layer, cls.kernel(layer, x), flat, state)

    @classmethod
    def prepare(cls, layer: DecodeLinear, flat: torch.Tensor) -> tuple[torch.Tensor, object]:
        """The kernel's input made from ``flat`` ``(rows, in)``, and what :meth:`finish` needs besides (or None)."""
        return flat, None

    @classmethod
    def kernel(cls, layer: DecodeLinear, x: torch.Tensor) -> torch.Tensor:
        """The product itself, on the input :meth:`prepare` made: the one call that reads the packed weights."""
        raise NotImplementedError

    @classmethod
    def finish(cls, layer: DecodeLinear, out: torch.Tensor, flat: torch.Tensor, state: object) -> torch.Tensor:
        """``(rows, out)`` in ``flat``'s dtype, with the bias, from the kernel's result ``out``."""
        return out

    @classmethod
    def kernel_call(cls, layer: DecodeLinear, flat: torch.Tensor) -> Callable[[], torch.Tensor]:
        """The kernel alone on ``flat`` prepared once, as a call without arguments: what a product costs without
        the operators around it, the ceiling that ``llm-lab bench generate`` reports (not a way to decode)."""
        x, _ = cls.prepare(layer, flat)
        return functools.partial(cls.kernel, layer, x)

    @classmethod
    def nbytes(cls, layer: DecodeLinear) -> int:
        """Bytes a product through ``layer`` reads: its weights, scales and biases (the roofline's numerator)."""
        return sum(b.nbytes for b in layer.buffers(recurse=False))


class Float32Weights(DecodeWeights):
    """The model's own weights (float32 for a model from the lab), as an ``(in, out)`` copy cut into column blocks.

    ``packed_weight`` is ``(in, out)``, or on a CPU with several threads ``(parts, in, width)`` column blocks,
    zero-padded to equal width, that one ``bmm`` runs on all threads (see the module docs).
    """

    name = "fp32"
    bytes_per_weight = 4.0

    @classmethod
    def pack(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> dict[str, object]:
        weight = weight.t()  # (in, total)
        total = weight.shape[1]
        parts = _split_count(total, weight.device)
        if parts == 1:
            return {"packed_weight": weight.clone(memory_format=torch.contiguous_format), "packed_bias": bias}
        # Column blocks, zero-padded to equal width: (parts, in, width), and the bias as (parts, 1, width).
        width = -(-total // parts)
        padded = weight.new_zeros(weight.shape[0], parts * width)
        padded[:, :total] = weight
        blocks = padded.view(-1, parts, width).transpose(0, 1).contiguous()
        if bias is not None:
            bias = torch.cat([bias, bias.new_zeros(parts * width - total)]).view(parts, 1, width)
        return {"packed_weight": blocks, "packed_bias": bias}

    @classmethod
    def prepare(cls, layer: DecodeLinear, flat: torch.Tensor) -> tuple[torch.Tensor, object]:
        weight = layer.packed_weight
        if weight.dim() == 2:
            return flat, None
        return flat.expand(weight.shape[0], *flat.shape), None  # (parts, rows, in): one block per thread

    @classmethod
    def kernel(cls, layer: DecodeLinear, x: torch.Tensor) -> torch.Tensor:
        weight, bias = layer.packed_weight, layer.packed_bias
        if weight.dim() == 2:  # (in, total)
            return x @ weight if bias is None else torch.addmm(bias, x, weight)  # (rows, total)
        return torch.bmm(x, weight) if bias is None else torch.baddbmm(bias, x, weight)  # (parts, rows, width)

    @classmethod
    def finish(cls, layer: DecodeLinear, out: torch.Tensor, flat: torch.Tensor, state: object) -> torch.Tensor:
        if out.dim() == 2:
            return out
        return out.transpose(0, 1).reshape(flat.shape[0], -1)[:, : sum(layer.sizes)]  # (rows, total)


class _BFloat16Rows(DecodeWeights):
    """A kernel that takes the input rows in bfloat16 and returns bfloat16: rows rounded on the way in, the result
    turned back to the input's dtype and the float32 bias added on the way out."""

    @classmethod
    def prepare(cls, layer: DecodeLinear, flat: torch.Tensor) -> tuple[torch.Tensor, object]:
        return flat.to(torch.bfloat16), None

    @classmethod
    def finish(cls, layer: DecodeLinear, out: torch.Tensor, flat: torch.Tensor, state: object) -> torch.Tensor:
        out = out.to(flat.dtype)
        return out if layer.packed_bias is None else out + layer.packed_bias


class BFloat16Weights(_BFloat16Rows):
    """Weights rounded to bfloat16, ``(out, in)`` as ``F.linear`` wants them; the input row is rounded too.

    The bias stays float32 and is added to the float32 result. Fast only on CPUs with bfloat16 units.
    """

    name = "bf16"
    bytes_per_weight = 2.0

    @classmethod
    def pack(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> dict[str, object]:
        return {"packed_weight": weight.to(torch.bfloat16).contiguous(), "packed_bias": bias}

    @classmethod
    def kernel(cls, layer: DecodeLinear, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, layer.packed_weight)


class Int8Weights(_BFloat16Rows):
    """Weight-only int8: ``W ~ q * scale`` with one scale per output channel, ``q`` in ``[-127, 127]``.

    The format of the ``int8`` decode dtype; :meth:`implementation` picks the kernel that multiplies by it here:
    :class:`FbgemmInt8Weights` where torch has fbgemm (x86 CPUs with AVX2 or AVX-512), else this class, through
    ``torch.ops.aten._weight_int8pack_mm``.

    In this class ``scale = absmax(row) / 127`` is rounded to bfloat16 (the kernel's dtype) before
    ``q = round(W / scale)`` is taken, so the stored pair is exactly what is multiplied.
    ``torch.ops.aten._weight_int8pack_mm(x, q, scale)`` computes ``x @ (q * scale).T`` without building the float
    matrix; ``x`` goes in as bfloat16 (see the module docs), the bias is added in float32. ``packed_weight`` is
    ``q`` ``(out, in)`` int8, ``weight_scale`` ``(out,)``. The kernel accumulates in float32 and returns bfloat16,
    so every product (the logits too) carries bfloat16's rounding (8 significant bits) besides the weights'.
    """

    name = "int8"
    bytes_per_weight = 1.0

    @classmethod
    def implementation(cls, device: torch.device) -> type[DecodeWeights]:
        return FbgemmInt8Weights if device.type == "cpu" and fbgemm_int8_available() else cls

    @classmethod
    def pack(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> dict[str, object]:
        weight = weight.float()
        scale = (weight.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.bfloat16).tiny).to(torch.bfloat16)
        q = torch.round(weight / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
        return {"packed_weight": q.contiguous(), "packed_bias": bias, "weight_scale": scale}

    @classmethod
    def kernel(cls, layer: DecodeLinear, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x, layer.packed_weight, layer.weight_scale)


#: The two extra input columns of :class:`FbgemmInt8Weights`: they pin the range fbgemm quantises each input to,
#: ``[-1, 255 / 64 - 1]`` over the 256 levels of a byte, so a step is exactly 1/64, zero is level 64 and ``+-1`` (a
#: row's peak, after dividing by it) are the levels 0 and 128.
_RANGE_PINS = (-1.0, 255 / 64 - 1)


class FbgemmInt8Weights(Int8Weights):
    """The ``int8`` format multiplied by fbgemm's int8 matrix product (``torch.fbgemm_linear_int8_weight``).

    fbgemm multiplies unsigned 8-bit inputs by signed 8-bit weights in integers, so it reads a quarter of fp32's
    bytes and needs no bfloat16 units: on the AVX2 development machine GPT-2's output head (384 x 50257) took
    1.7 ms against 5.5 ms through ``_weight_int8pack_mm`` and 3.7 ms in fp32. The operator quantises its input
    itself, to 8 bits over the range of the whole input, which would make one row's result depend on the rows
    beside it (and the server promises that it does not). So each row is divided by its own absolute maximum
    before it goes in, two constant columns (:data:`_RANGE_PINS`, with zero weights) pin the range to
    ``[-1, 2.98]`` for every row (steps of exactly 1/64), and the result is multiplied back by the row's maximum
    and each channel's scale. That range also keeps every quantised input in ``[0, 128]``: on AVX2 fbgemm adds
    products in pairs in 16-bit integers, and ``2 * 128 * 127`` fits where ``2 * 255 * 127`` would saturate. The
    cost: an input row is rounded to 129 levels across its range (about 7 bits), the weights as in
    :class:`Int8Weights` (``q`` in ``[-127, 127]``, ``scale = absmax / 127``, kept in float32). Rows are
    independent and the integer sums are exact, so a row gives the same result alone or in any batch.

    (:attr:`rows_independent`: measured too, a row's logits through a whole decode step of an int8 copy were
    bit for bit the same in batches of 1, 3, 5 and 8 rows, at 1 and 2 threads, where fp32 differed by about 2e-6.)

    fbgemm keeps the packed matrix in an object of its own (``fbgemm``, see :class:`_FbgemmMatrix`), not in a
    tensor: it is shared, never copied, by copies of the layer. torch marks these operators as deprecated; where
    they are missing or fail (a torch built without fbgemm, a non-x86 CPU) :class:`Int8Weights` is used instead.
    """

    rows_independent = True

    @classmethod
    def pack(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> dict[str, object]:
        weight = weight.float()
        scale = (weight.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)  # (out,)
        q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)  # (out, in)
        framed = torch.cat([q, q.new_zeros(q.shape[0], len(_RANGE_PINS))], dim=1)  # (out, in + 2)
        return {
            "fbgemm": _FbgemmMatrix(framed),
            "weight_scale": scale,
            "packed_bias": bias,
            "range_pins": torch.tensor(_RANGE_PINS),
        }

    @classmethod
    def prepare(cls, layer: DecodeLinear, flat: torch.Tensor) -> tuple[torch.Tensor, object]:
        peak = torch.linalg.vector_norm(flat, float("inf"), dim=1, keepdim=True)  # (rows, 1): max |x|
        peak = peak.clamp_min_(torch.finfo(flat.dtype).tiny)
        framed = torch.cat([flat / peak, layer.range_pins.expand(flat.shape[0], -1)], dim=1)  # (rows, in + 2)
        return framed, peak

    @classmethod
    def kernel(cls, layer: DecodeLinear, x: torch.Tensor) -> torch.Tensor:
        return layer.fbgemm(x)  # (rows, out)

    @classmethod
    def finish(cls, layer: DecodeLinear, out: torch.Tensor, flat: torch.Tensor, state: object) -> torch.Tensor:
        out = out.mul_(state)  # times each row's peak
        if layer.packed_bias is None:
            return out.mul_(layer.weight_scale)
        return torch.addcmul(layer.packed_bias, out, layer.weight_scale)

    @classmethod
    def nbytes(cls, layer: DecodeLinear) -> int:
        return layer.fbgemm.weights + super().nbytes(layer)


class _FbgemmMatrix:
    """An int8 ``(out, in)`` matrix packed by fbgemm, and its product with float rows (``fbgemm(x)``).

    The packed matrix lives in memory fbgemm owns, behind a tensor that only carries its address (torch's
    ``cpp_custom_type_hack``): copying that tensor would copy the address, not the matrix. So it is kept here,
    and a deep copy of a decode copy shares it (it is never written after packing).
    """

    def __init__(self, q: torch.Tensor) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "deprecated": the fallback above covers a torch without it
            self._packed = torch.fbgemm_pack_quantized_matrix(q)
        self._column_sums = q.sum(dim=1, dtype=torch.int32)  # what fbgemm subtracts for the input's zero point
        self._shape = torch.zeros((), dtype=torch.int8).expand(q.shape)  # the operator reads only the shape
        self._no_bias = torch.zeros(q.shape[0])
        self.weights = q.numel()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ q.T`` for float rows ``x`` ``(rows, in)``, ``x`` quantised by fbgemm to 8 bits over its range.

        A product of fewer than :data:`MIN_PARALLEL_WEIGHTS` weights runs on one thread (the result is the same
        on any number: the sums are integers).
        """
        threads = torch.get_num_threads()
        if threads == 1 or self.weights >= MIN_PARALLEL_WEIGHTS:
            return self._product(x)
        torch.set_num_threads(1)
        try:
            return self._product(x)
        finally:
            torch.set_num_threads(threads)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fbgemm_linear_int8_weight(x, self._shape, self._packed, self._column_sums, 1.0, 0, self._no_bias)

    def __deepcopy__(self, memo: dict) -> _FbgemmMatrix:
        return self

    def __reduce__(self) -> tuple:
        raise TypeError("an fbgemm-packed int8 matrix cannot be pickled; save the model and prepare_for_decode again")


@functools.cache
def fbgemm_int8_available() -> bool:
    """Whether torch's fbgemm int8 product runs here (a torch built with fbgemm, an x86 CPU with AVX2 or later)."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    try:
        probe = _FbgemmMatrix(torch.ones(4, 8, dtype=torch.int8))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out = probe(torch.ones(1, 8))
    except (RuntimeError, AttributeError):
        return False
    return torch.allclose(out, torch.full((1, 4), 8.0))  # the kernel answers, and answers right


#: The decode dtypes by name, the only list of them (CLI choices and ``prepare_for_decode(dtype=...)`` read it).
DECODE_DTYPES: dict[str, type[DecodeWeights]] = {
    cls.name: cls for cls in (Float32Weights, BFloat16Weights, Int8Weights)
}


def _int8_kernel_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def _int8_beats_fp32() -> bool:
    """Whether int8 decodes faster than fp32 on this CPU: with fbgemm, or with bfloat16 units for the other kernel."""
    from llm_lab.core.train.precision import cpu_bf16_flags, has_bf16_matrix_units

    return fbgemm_int8_available() or (_int8_kernel_available() and has_bf16_matrix_units(cpu_bf16_flags()))


def resolve_decode_dtype(name: str, device: torch.device | str = "cpu") -> str:
    """The decode dtype to use for ``name`` (a key of :data:`DECODE_DTYPES` or ``"auto"``) on ``device``.

    ``auto`` is ``int8`` on a CPU where an int8 kernel beats fp32: fbgemm's (x86 CPUs with AVX2 or AVX-512,
    :func:`fbgemm_int8_available`), or ``_weight_int8pack_mm`` on a CPU with bfloat16 units (``avx512_bf16``,
    ``amx_bf16``); ``fp32`` anywhere else (a CPU with neither, another device). It never picks ``bf16``: without
    bfloat16 units a bfloat16 product is slower than float32, and with them int8 still reads half the bytes.

    Raises:
        ValueError: an unknown name (the message lists the choices), or ``int8`` where torch lacks the kernel.
    """
    if name == "auto":
        on_cpu = torch.device(device).type == "cpu"
        return "int8" if on_cpu and _int8_beats_fp32() else "fp32"
    if name not in DECODE_DTYPES:
        raise ValueError(f"unknown decode dtype {name!r}; choose one of: auto, {', '.join(DECODE_DTYPES)}")
    if name == "int8" and not (_int8_kernel_available() or fbgemm_int8_available()):
        raise ValueError("decode dtype int8 needs torch.ops.aten._weight_int8pack_mm, which this torch lacks")
    return name


class DecodeLinear(nn.Module):
    """One or several linear layers that read the same input, as one product over a decode copy of their weights.

    ``forward(x)`` gives what the layers give (``x @ W.T + b`` each, up to summation order for ``fp32``, up to
    the rounding of the dtype otherwise): one tensor for one layer, a tuple in the layers' order for several. The
    weights are buffers (a copy for inference, not parameters to train) stored as the dtype's
    :class:`DecodeWeights` class packs them.

    Args:
        layers: exact ``nn.Linear`` layers with the same input width, all with a bias or all without.
        dtype: a key of :data:`DECODE_DTYPES` (``fp32``, ``bf16``, ``int8``).

    Raises:
        ValueError: no layers, a subclass of ``nn.Linear`` (its own forward would be skipped), different input
            widths, a mix of layers with and without a bias, or an unknown dtype.
    """

    def __init__(self, layers: Sequence[nn.Linear], dtype: str = "fp32") -> None:
        super().__init__()
        if not layers or any(type(layer) is not nn.Linear for layer in layers):
            raise ValueError("DecodeLinear needs one or more nn.Linear layers (not subclasses, whose forward differs)")
        if len({layer.in_features for layer in layers}) != 1 or len({layer.bias is None for layer in layers}) != 1:
            raise ValueError(
                "layers fused into one DecodeLinear must share their input width and all have a bias or none"
            )
        if dtype not in DECODE_DTYPES:
            raise ValueError(f"unknown decode dtype {dtype!r}; choose one of: {', '.join(DECODE_DTYPES)}")
        self.weights = DECODE_DTYPES[dtype].implementation(layers[0].weight.device)
        self.in_features = layers[0].in_features
        self.sizes = tuple(layer.out_features for layer in layers)
        with torch.no_grad():
            weight = torch.cat([layer.weight for layer in layers])  # (total, in), a copy
            bias = None if layers[0].bias is None else torch.cat([layer.bias for layer in layers])  # (total,)
            buffers = self.weights.pack(weight, bias)
        # Not called weight/bias: code that reads a layer's ``weight`` expects float ``(out, in)`` and must fail
        # here, not compute with a transposed or quantised matrix.
        for name, value in buffers.items():
            if value is None or isinstance(value, torch.Tensor):
                self.register_buffer(name, None if value is None else value.detach(), persistent=False)
            else:
                setattr(self, name, value)
        self.train(False)

    @property
    def dtype(self) -> str:
        """The decode dtype's name (a key of :data:`DECODE_DTYPES`)."""
        return self.weights.name

    @property
    def nbytes(self) -> int:
        """Bytes one product reads: the packed weights, their scales and the bias."""
        return self.weights.nbytes(self)

    @property
    def parts(self) -> int:
        """Column blocks the weight is cut into (1: one matrix)."""
        return self.packed_weight.shape[0] if self.weights is Float32Weights and self.packed_weight.dim() == 3 else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.weights.matmul(self, x.reshape(-1, self.in_features))  # (rows, total)
        total = sum(self.sizes)
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
        return (
            f"in_features={self.in_features}, out_features={self.sizes}, bias={bias}, dtype={self.dtype}, "
            f"parts={self.parts}"
        )


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


def model_in_dtype(model: nn.Module, dtype: str) -> nn.Module:
    """``model`` itself for ``"fp32"`` (exact: scoring and evaluation run the weights as trained; generation
    prepares its own fp32 copy when that pays), else its decode copy in ``dtype`` (:func:`prepare_for_decode`).

    Raises:
        ValueError: an unknown ``dtype`` (see :func:`resolve_decode_dtype`).
    """
    return model if dtype == "fp32" else prepare_for_decode(model, dtype)


def prepare_for_decode(model: nn.Module, dtype: str = "fp32") -> nn.Module:
    """A decode-only copy of ``model`` with its linear layers as :class:`DecodeLinear` (see the module docs).

    Every exact ``nn.Linear`` is replaced (subclasses keep their own forward and are copied as they are), and the
    projections a module declares in ``fuse_for_decode`` become that module's ``fused`` product. Everything else
    is copied unchanged. The copy is in eval mode, every parameter is frozen and ``train()`` raises; it does not
    follow later changes to ``model``: prepare again after training or loading weights.

    Idempotent: a model without an exact ``nn.Linear`` left (a prepared copy, or a model that never had one) is
    returned as it is, not copied.

    Args:
        model: a ``MiniGPT`` or any module (on any device and dtype; the copy stays there).
        dtype: how the copy holds its linear weights, a key of :data:`DECODE_DTYPES` or ``"auto"`` (see
            :func:`resolve_decode_dtype` and the module docs): ``fp32`` (the default, the model's own weights),
            ``bf16`` or ``int8`` (weight-only, a scale per output channel).

    Returns:
        The decode copy, or ``model`` itself when it has nothing to replace.

    Example::

        fast = prepare_for_decode(model)  # once; again after the weights change
        out = generate(fast, prompt_ids, 200, temperature=0.8, seed=0)
        small = prepare_for_decode(model, dtype="int8")  # a quarter of the bytes per step

    Raises:
        ValueError: an unknown dtype, a prepared copy asked for another dtype than it holds, or a model whose
            parameters are not plain tensors.
    """
    first = next(model.parameters(), None)
    dtype = resolve_decode_dtype(dtype, first.device if first is not None else "cpu")
    if type(model) is nn.Linear:  # a bare layer: it is its own (only) product
        return DecodeLinear([model], dtype)
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    if not linears:
        held = {m.dtype for m in model.modules() if isinstance(m, DecodeLinear)}
        if held and held != {dtype}:
            raise ValueError(
                f"this model is already a decode copy in {', '.join(sorted(held))}, not {dtype}; prepare the "
                "original model again with the dtype you want"
            )
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
            target.fused = DecodeLinear([getattr(source, n) for n in names], dtype)
            for n in names:
                delattr(target, n)  # the fused product replaces them; a stray use fails loudly
        for child_name, child in source.named_children():
            if type(child) is nn.Linear and child_name not in names:
                setattr(target, child_name, DecodeLinear([child], dtype))
    decode.requires_grad_(False)
    # ``train()`` on the copy raises in its first DecodeLinear, after torch has already switched the modules before
    # it to training mode; this hook keeps such a half-switched copy from decoding with dropout on.
    decode.register_forward_pre_hook(_refuse_training_mode)
    return decode.eval()


#: torch runs an elementwise operator on one thread below this many elements (``at::internal::GRAIN_SIZE``) and
#: splits it across its threads from there on, each share ending where the thread count puts it.
ELEMENTWISE_GRAIN = 32768

#: torch's vector loop for an elementwise operator takes up to this many floats a step (two AVX-512 vectors) and
#: computes the elements left over one at a time.
VECTOR_STEP = 32


def rows_independent(model: nn.Module, rows: int) -> bool:
    """Whether a decode step of ``model`` over up to ``rows`` rows gives each row the same result bit for bit
    whatever rows run beside it.

    The products must promise it: a decode copy whose every product declares
    :attr:`DecodeWeights.rows_independent` (``int8`` through fbgemm), on a CPU. The rest of a step must too: norms
    and attention compute a row (and head) alone, but an activation with a transcendental function (tanh GELU,
    SiLU) computes the elements past its last full vector step, and the edges of each thread's share, with scalar
    code that rounds differently from the vector code; where those fall depends on the number of rows. They fall
    on no row's values when every activation width (the width of some product's input) is a multiple of
    :data:`VECTOR_STEP` and ``rows`` of the widest stay under :data:`ELEMENTWISE_GRAIN`, so this requires both.
    Measured: tanh GELU and SiLU rows differed with the number of rows at width 344 (1 to 3 threads) and at width
    4096 with 3 threads and 5 to 8 rows, never at widths of 352, 384 and 1536 under the grain; whole int8 steps
    of GPT-2 and Llama copies are checked by a test. False for anything else, a model with no decode product
    included. The server runs a decode step over only its busy slots when this holds.
    """
    products = [m for m in model.modules() if isinstance(m, DecodeLinear)]
    if not products or any(isinstance(m, nn.Linear) for m in model.modules()):
        return False
    if not all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()]):
        return False
    widths = [p.in_features for p in products]
    return (
        all(p.weights.rows_independent for p in products)
        and all(width % VECTOR_STEP == 0 for width in widths)
        and rows * max(widths) < ELEMENTWISE_GRAIN
    )


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
    not plain tensors (an FSDP-sharded model decodes as it is), nor for a model with no ``nn.Linear`` left (a
    decode copy, in whatever dtype it was prepared, is used as it is).
    """
    first = next(model.parameters(), None)
    on_cpu = first is not None and first.device.type == "cpu" and _plain_parameters(model)
    unprepared = any(type(m) is nn.Linear for m in model.modules())  # a decode copy (any dtype) is used as it is
    return on_cpu and unprepared and (new_tokens is None or new_tokens >= MIN_NEW_TOKENS)
