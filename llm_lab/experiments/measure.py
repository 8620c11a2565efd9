"""Timing and peak-memory measurement shared by the benchmarks.

Time: a callable is run until a minimum time has passed (so sub-millisecond calls are timed over many runs),
several times; the median per-call time is reported. Accelerators are synchronised before the clock is read.

Peak memory: the most memory a callable has allocated *beyond what existed when it started* (activations,
outputs, gradients, workspace; not its inputs).

- CUDA: ``torch.cuda.reset_peak_memory_stats`` and ``max_memory_allocated``, exact for PyTorch's allocator.
- CPU: PyTorch keeps no peak counter for CPU tensors, so the callable runs once under ``torch.profiler`` with
  ``profile_memory=True``. The profiler records every CPU allocation and free as a ``[memory]`` event with a
  signed byte count; the running sum of those counts in time order is the live memory, and its maximum is
  the peak. (Python's ``tracemalloc`` cannot be used: tensor storage is allocated in C++, outside its view.)
  Memory held by threads of the BLAS library's own pools is not a tensor allocation and is not counted.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from llm_lab.utils.devices import synchronize


def time_callable(
    fn: Callable[[], Any],
    device: str | torch.device = "cpu",
    *,
    warmup: int = 2,
    repeats: int = 5,
    min_time_s: float = 0.02,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` trials, after ``warmup`` untimed calls.

    Each trial calls ``fn`` until at least ``min_time_s`` has passed and divides by the number of calls.
    ``clock`` reads seconds (tests pass a made-up one to check the arithmetic).
    """
    if repeats <= 0:
        raise ValueError(f"repeats must be positive, got {repeats}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    per_call = []
    for _ in range(repeats):
        calls = 0
        start = clock()
        while True:
            fn()
            calls += 1
            synchronize(device)
            elapsed = clock() - start
            if elapsed >= min_time_s:
                break
        per_call.append(elapsed / calls)
    return statistics.median(per_call)


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null: the profiler's C++ side logs two lines per session there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    # Allocation (+bytes) and free (-bytes) events of CPU tensors, in the order they happened.
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and _is_cpu(e)]
    events.sort(key=lambda event: event.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def _is_cpu(event: Any) -> bool:
    return str(event.device_type()).rsplit(".", 1)[-1].upper() == "CPU"


def peak_memory_bytes(fn: Callable[[], Any], device: str | torch.device = "cpu") -> int:
    """Peak bytes allocated by one call of ``fn`` beyond what was allocated before it (see module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    if device.type == "cpu":
        return _cpu_peak_bytes(fn)
    raise ValueError(f"peak memory is measured on cpu and cuda only, not on {device.type}")
