"""Floating-point throughput of this machine, for model FLOPs utilisation (MFU).

MFU = achieved FLOP/s of training (tokens/s x the model's FLOPs per token) / the peak FLOP/s of the hardware.
Datasheet peaks are unknown for most CPUs (and optimistic for GPUs), so the peak used here is *measured*: the
best rate of a dense square matrix product in the given dtype on the given device. That is the ceiling a
Transformer's matrix products can reach in practice, which makes MFU an honest "how close to the machine's
limit" number.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from llm_lab.utils.devices import synchronize


def measure_matmul_peak(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    size: int | None = None,
    repeats: int = 5,
    min_time_s: float = 0.05,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Measure the peak dense matrix-multiply throughput in FLOP/s.

    Times ``size x size @ size x size`` products (``2 * size**3`` FLOPs each) in batches that last at least
    ``min_time_s``, ``repeats`` times, and returns the best rate: the peak is what the hardware can do, and on a
    shared machine the slower trials measure the neighbours, not the hardware.

    Args:
        device: where to measure (``"cpu"``, ``"cuda"``, ``"mps"``, or a ``torch.device``).
        dtype: element type of the product, e.g. ``torch.float32`` or ``torch.bfloat16``.
        size: side of the square matrices; ``None`` picks 1024 on CPU (about 2 GFLOP per product, tens of
            milliseconds) and 4096 on accelerators (large enough to saturate them).
        repeats: timed trials; the best one is returned.
        min_time_s: each trial runs products until at least this long has passed.
        clock: reads seconds (tests pass a made-up one to check the arithmetic).

    Returns:
        The best measured rate in FLOP/s.

    Raises:
        ValueError: for a non-positive ``size`` or ``repeats``, or a dtype the device cannot multiply.
    """
    device = torch.device(device)
    if size is None:
        size = 1024 if device.type == "cpu" else 4096
    if size <= 0 or repeats <= 0:
        raise ValueError(f"size and repeats must be positive, got size={size}, repeats={repeats}")
    generator = torch.Generator().manual_seed(0)
    try:
        a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        a @ b  # warm-up: first call pays for kernel selection and lazy initialisation
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"cannot multiply {dtype} matrices on {device}: {e}") from e
    synchronize(device)

    flops_per_product = 2.0 * size**3
    best = 0.0
    for _ in range(repeats):
        n_products = 0
        start = clock()
        while True:
            a @ b
            n_products += 1
            synchronize(device)
            elapsed = clock() - start
            if elapsed >= min_time_s:
                break
        best = max(best, n_products * flops_per_product / elapsed)
    return best
