"""Timing and peak-memory measurement (llm_lab/experiments/measure.py)."""

from __future__ import annotations

import pytest
import torch

from llm_lab.experiments.measure import peak_memory_bytes, time_callable


def test_cpu_peak_memory_follows_allocations_and_frees():
    """a (4 MB) and b (2 MB) live together: 6 MB; a is freed, then c (8 MB) joins b: the peak is 10 MB.

    A running total that ignored frees would say 14 MB; one that only saw the largest tensor would say 8 MB.
    """

    def fn():
        a = torch.empty(1_000_000)
        b = torch.empty(500_000)
        del a
        c = torch.empty(2_000_000)
        return b, c

    assert peak_memory_bytes(fn) == 10_000_000


def test_cpu_peak_memory_excludes_existing_tensors():
    existing = torch.ones(1_000_000)
    assert peak_memory_bytes(lambda: existing.sum()) < 1_000


def test_peak_memory_rejects_unsupported_devices():
    with pytest.raises(ValueError, match="cpu and cuda only"):
        peak_memory_bytes(lambda: None, device="meta")


def test_time_callable_measures_per_call_time():
    calls = []

    def fn():
        calls.append(1)
        torch.ones(1000).sum()

    # Each trial calls until 0.25 s have passed: 3 calls in 0.3 s, 1 call in 0.4 s, 2 calls in 0.3 s,
    # so 0.1, 0.4 and 0.15 s per call.
    readings = iter([0.0, 0.1, 0.2, 0.3, 1.0, 1.4, 2.0, 2.1, 2.3])
    seconds = time_callable(fn, warmup=1, repeats=3, min_time_s=0.25, clock=lambda: next(readings))
    assert seconds == pytest.approx(0.15)  # the median
    assert len(calls) == 1 + 3 + 1 + 2  # the warm-up call, then every timed call
    with pytest.raises(ValueError, match="repeats must be positive"):
        time_callable(fn, repeats=0)
