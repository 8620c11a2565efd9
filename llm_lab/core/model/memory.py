"""How much memory a model (or a training run of it) needs, estimated from its config before anything is allocated.

A config can ask for more than any machine holds: ``n_embd`` 2^20 is 13 trillion parameters per layer, ``n_layer``
1e7 is ten million Python modules, ``batch_size`` 1e9 is petabytes of activations. Building such a model allocates
until the operating system refuses (a traceback, or the machine swapping for minutes). :func:`estimate_memory`
works the need out from the config alone, and :func:`check_memory` refuses what cannot fit with one line that
gives the estimate and the machine's memory. ``MiniGPT.__init__`` runs the check for the weights, so every path
that builds a model (training, package loading, sampling, serving) is covered; training adds its batch.

The estimate, in bytes (``P`` parameters, ``L`` layers, ``C`` = ``n_embd``, ``H`` the MLP width, ``V`` the
vocabulary, ``h`` query heads, ``B x T`` tokens of one micro-batch or generation batch):

==================  ===========================================  ====================================================
part                bytes                                        why
==================  ===========================================  ====================================================
weights             ``4 P`` + buffers + ``L x 48 KiB``           fp32 parameters (autocast keeps them fp32); each
                                                                 block also costs ~43 KB of Python objects
                                                                 (measured, CPython 3.11, torch 2.x)
training state      ``12 P``                                     gradients (4) and AdamW's two moments (8)
activations         ``4 B T (L (10 C + 4 H + h T) + 2 C + 3 V)``  training: what backward keeps per layer (norm
                                                                 inputs, q/k/v, attention output, MLP
                                                                 intermediates, and the ``h x T`` attention
                                                                 scores where a kernel materialises them), the
                                                                 embeddings, and logits + their fp32 copy + grad
generation          ``4 B T (2 L n_kv_head head_dim)`` + one     the KV cache, one layer's working set, the logits
                    layer's working set + ``4 B V``
==================  ===========================================  ====================================================

It is an *upper* estimate of the dominant terms (fp32 everywhere, attention scores counted), meant to catch
requests that cannot fit by a wide margin, not to predict peak memory to the byte.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_lab.core.model.block import Block
from llm_lab.core.model.config import MiniGPTConfig
from llm_lab.core.model.norms import build_norm
from llm_lab.core.model.positional import build_positional_encoding

__all__ = [
    "PYTHON_BYTES_PER_LAYER",
    "MemoryEstimate",
    "check_memory",
    "count_parameters",
    "estimate_memory",
    "format_bytes",
    "machine_memory",
]

# Python objects of one Block (modules, their dicts, parameter wrappers): ~43 KB measured on CPython 3.11 with
# torch 2.x for a block with negligible weights; rounded up.
PYTHON_BYTES_PER_LAYER = 48 * 1024
_FP32 = 4


def _numel(module: torch.nn.Module) -> tuple[int, int]:
    """(parameters, buffer elements) of a module built on the meta device."""
    return (
        sum(p.numel() for p in module.parameters()),
        sum(b.numel() for b in module.buffers()),
    )


def _meta_counts(config: MiniGPTConfig) -> tuple[int, int, int]:
    """(parameters, buffer elements, parameters of one block), exact, allocating nothing.

    One block, the positional encoding and the final norm are built on the ``meta`` device (shapes only, no
    storage), so each variant's own modules decide their size; the embedding and head are counted here as
    ``MiniGPT`` lays them out (a test checks this against ``MiniGPT.num_parameters`` over the variant matrix).
    """
    _check_addressable(config)
    try:
        with torch.device("meta"):
            block_params, block_buffers = _numel(Block(config, 0))
            pos_params, pos_buffers = _numel(build_positional_encoding(config))
            norm_params, norm_buffers = _numel(build_norm(config.norm, config.n_embd, config.norm_eps, config.bias))
    except RuntimeError as e:  # torch's "Storage size calculation overflowed": one tensor past 2**63 bytes
        raise ValueError(f"{_sizes(config)}: a tensor of this model is too large to describe ({e}); make the model "
                         "smaller") from None
    embedding = config.vocab_size * config.n_embd
    head = 0 if config.tie_embeddings else embedding
    params = embedding + head + pos_params + norm_params + config.n_layer * block_params
    buffers = pos_buffers + norm_buffers + config.n_layer * block_buffers
    return params, buffers, block_params


# Past this many bytes of weights (1 EiB) no machine holds the model, and torch cannot even describe its largest
# tensor on the meta device (a tensor of 2**63 bytes overflows its size calculation): refused before building.
_ADDRESSABLE_BYTES = 2**60


def _sizes(config: MiniGPTConfig) -> str:
    """``model.n_layer=1, model.n_embd=1000000000, ...``: the keys that decide a model's size, for a message."""
    keys = ("n_layer", "n_embd", "mlp_hidden", "vocab_size", "context_length")
    return ", ".join(f"model.{k}={getattr(config, k)}" for k in keys if getattr(config, k) is not None)


def _check_addressable(config: MiniGPTConfig) -> None:
    """Refuse, with the keys and a lower bound of the parameters, a config too large to build even on ``meta``.

    Every block holds at least the query and output projections (``2 C^2``) and the MLP's two matrices
    (``2 C H``), and the model a ``V x C`` token embedding: a lower bound, in Python integers, that cannot overflow.
    """
    C, H, V, L = config.n_embd, config.hidden_dim, config.vocab_size, config.n_layer
    at_least = V * C + L * (2 * C * C + 2 * C * H)
    if _FP32 * at_least > _ADDRESSABLE_BYTES:
        raise ValueError(
            f"{_sizes(config)} asks for at least {at_least:.3g} parameters ({format_bytes(_FP32 * at_least)} of "
            "fp32 weights), more than any machine holds; make the model smaller (model.n_embd, model.n_layer, "
            "model.mlp_hidden, model.vocab_size)"
        )


def count_parameters(config: MiniGPTConfig) -> int:
    """The number of parameters ``MiniGPT(config)`` will have (tied embeddings counted once), without building it."""
    return _meta_counts(config)[0]


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs, by part (see the module docstring for the formulas).

    Attributes:
        parameters: the parameter count.
        weight_bytes: parameters, buffers and the Python objects of the modules.
        state_bytes: gradients and optimizer state (0 when not training).
        activation_bytes: activations of one micro-batch (training) or the KV cache and working set of one
            generation batch; 0 when no batch was given.
    """

    parameters: int
    weight_bytes: int
    state_bytes: int = 0
    activation_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.state_bytes + self.activation_bytes

    def describe(self) -> str:
        """``"about 52.8 TB (weights 52.8 TB, ...)"``: the parts that are not zero."""
        parts = [f"weights {format_bytes(self.weight_bytes)}"]
        if self.state_bytes:
            parts.append(f"gradients and AdamW state {format_bytes(self.state_bytes)}")
        if self.activation_bytes:
            parts.append(f"activations {format_bytes(self.activation_bytes)}")
        return f"about {format_bytes(self.total_bytes)} ({', '.join(parts)})"


def estimate_memory(
    config: MiniGPTConfig,
    *,
    batch_size: int = 0,
    seq_len: int | None = None,
    training: bool = False,
) -> MemoryEstimate:
    """Estimate the memory of a model, and of training it or generating with it, from its config alone.

    Args:
        config: the model.
        batch_size: sequences per micro-batch (training) or per generation batch; 0 counts the weights only.
        seq_len: tokens per sequence; defaults to ``config.context_length`` (training) or
            ``config.max_positions`` (generation).
        training: add gradients, AdamW state and the activations backward keeps.

    Returns:
        A :class:`MemoryEstimate`; nothing is allocated to compute it.
    """
    params, buffers, _ = _meta_counts(config)
    weight_bytes = _FP32 * (params + buffers) + config.n_layer * PYTHON_BYTES_PER_LAYER
    state_bytes = 3 * _FP32 * params if training else 0
    activation_bytes = 0
    if batch_size > 0:
        L, C, H, V, h = config.n_layer, config.n_embd, config.hidden_dim, config.vocab_size, config.n_head
        T = seq_len if seq_len is not None else (config.context_length if training else config.max_positions)
        tokens = batch_size * T
        per_layer = 10 * C + 4 * H + h * T
        if training:
            activation_bytes = _FP32 * tokens * (L * per_layer + 2 * C + 3 * V)
        else:
            kv = 2 * L * config.n_kv_head * config.head_dim  # type: ignore[operator]
            activation_bytes = _FP32 * (tokens * (kv + per_layer) + batch_size * V)
    return MemoryEstimate(params, weight_bytes, state_bytes, activation_bytes)


def format_bytes(n: float) -> str:
    """``1536 -> "1.5 KiB"``: binary units, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _host_memory() -> int | None:
    """Physical memory of this machine, lowered to the container's cgroup limit when there is one."""
    total: int | None = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        total = None
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = None
    if total is None or total <= 0:
        return None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        limit = _read_int(limit_file)
        if limit is not None and 0 < limit < total:
            total = limit
    return total


def machine_memory(device: torch.device | str | None = None) -> int | None:
    """Total memory a model on ``device`` can use, in bytes: the GPU's on CUDA, else the machine's RAM.

    RAM is ``MemTotal`` of ``/proc/meminfo`` (``os.sysconf`` elsewhere), capped by a cgroup memory limit;
    ``None`` when it cannot be found out (then nothing is refused).
    """
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory)
    return _host_memory()


def check_memory(
    estimate: MemoryEstimate,
    device: torch.device | str | None = None,
    *,
    what: str = "this model",
    hint: str = "make the model smaller (model.n_layer, model.n_embd, model.vocab_size)",
) -> None:
    """Refuse (``ValueError``, one line) an estimate larger than the memory of ``device``.

    Args:
        estimate: from :func:`estimate_memory`.
        device: where the model will live; ``None`` is the CPU.
        what: names the request in the message (``"this model"``, ``"training with train.batch_size=64"``).
        hint: what to change.
    """
    available = machine_memory(device)
    if available is not None and estimate.total_bytes > available:
        where = "this GPU" if torch.device(device or "cpu").type == "cuda" else "this machine"
        raise ValueError(
            f"{what} needs {estimate.describe()} for {estimate.parameters:,} parameters, but {where} has "
            f"{format_bytes(available)} of memory; {hint}"
        )
