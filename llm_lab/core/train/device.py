"""Device, precision and compilation choices, each made in one small function.

* :func:`select_device`: ``auto`` picks cuda, then mps, then cpu.
* :func:`resolve_precision`: what ``precision="auto"`` means on a device.
* :func:`autocast_context`: the autocast region for a precision (``nullcontext`` for fp32).
* :func:`maybe_compile`: ``torch.compile`` where it can work, else the eager module and a warning.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import warnings
from typing import Any

import torch

from llm_lab.core.train.precision import choose_cpu_precision, model_width, warn_if_cpu_bf16_is_slow
from llm_lab.utils.devices import mps_available

__all__ = ["autocast_context", "maybe_compile", "precision_dtype", "resolve_precision", "select_device"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def select_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """Turn a device name from the config into a ``torch.device``.

    Args:
        name: ``auto`` | ``cpu`` | ``cuda`` | ``mps``.
        local_rank: under ``torchrun`` on CUDA, the GPU index of this process.

    Raises:
        ValueError: the requested backend is not available on this machine.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device='cuda' but CUDA is not available here; use device 'auto' or 'cpu'")
        return torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
    if name == "mps":
        if not mps_available():
            raise ValueError("train.device='mps' but MPS is not available here; use device 'auto' or 'cpu'")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {name!r}; choose one of: auto, cpu, cuda, mps")


def resolve_precision(precision: str, device: torch.device, model: torch.nn.Module | None = None) -> str:
    """The concrete precision (``fp32`` | ``bf16`` | ``fp16``) a run uses on ``device``.

    ``auto`` is fp32 on MPS, bf16 on CUDA GPUs that support it and fp16 (with a grad scaler) on older ones.
    On CPU it is bf16 only on CPUs with bf16 matrix units and for models wide enough to gain from it
    (:func:`llm_lab.core.train.precision.choose_cpu_precision`, given ``model``), else fp32.

    An explicit ``bf16`` on a CPU without bf16 units runs, after one warning with the measured slowdown
    (:func:`llm_lab.core.train.precision.warn_if_cpu_bf16_is_slow`).

    Raises:
        ValueError: fp16 off CUDA (it needs a grad scaler; use bf16 there), or bf16 on a GPU without it.
    """
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu":
            return choose_cpu_precision(model_width(model))
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' needs CUDA (a grad scaler); on {device.type} use 'bf16' or 'fp32'")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bf16 support; use precision 'fp16' or 'fp32'")
    if precision not in _DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose one of: auto, fp32, bf16, fp16")
    if precision == "bf16" and device.type == "cpu":
        warn_if_cpu_bf16_is_slow()  # obeyed, but said once: an emulated bf16 step is many times slower
    return precision


def precision_dtype(precision: str) -> torch.dtype:
    """The compute dtype of a concrete precision."""
    return _DTYPES[precision]


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The autocast region for one forward pass; parameters and optimizer state stay fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def compile_unsupported_reason(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot work here, or ``None`` when it should."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if sys.platform == "win32":
        return "torch.compile is not supported on Windows"
    if device.type == "mps":
        return "torch.compile is not supported on MPS"
    if device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        return "torch.compile on CPU needs a C++ compiler (c++, g++ or clang++) on PATH"
    return None


def maybe_compile(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``torch.compile(model)`` where supported; otherwise warn and return ``model`` unchanged."""
    reason = compile_unsupported_reason(device)
    if reason is not None:
        warnings.warn(f"train.compile=true ignored: {reason}; running eagerly", RuntimeWarning, stacklevel=2)
        return model
    return torch.compile(model)  # type: ignore[return-value]
