"""Environment probes (llm_lab/experiments/env.py) and the shared matmul-peak measurement."""

from __future__ import annotations

import pytest
import torch

from llm_lab.core.train.flops import measure_matmul_peak
from llm_lab.experiments.env import (
    collect_environment,
    dtype_works,
    format_env_report,
    has_bf16_matrix_units,
    read_cpu_flags,
    read_cpu_model,
)

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Example Xeon
flags\t\t: fpu sse avx2 avx512f amx_tile amx_bf16 avx512_bf16

processor\t: 1
flags\t\t: fpu sse
"""


def test_cpu_flags_and_model_from_cpuinfo(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    flags = read_cpu_flags(path)
    assert {"avx2", "amx_bf16", "avx512_bf16"} <= flags  # the first core's line
    assert read_cpu_model(path) == "Example Xeon"
    assert has_bf16_matrix_units(flags)
    assert not has_bf16_matrix_units({"avx2", "avx512f"})
    assert read_cpu_flags(tmp_path / "missing") == set()


def test_dtype_probe():
    assert dtype_works(torch.float32)
    assert dtype_works(torch.bfloat16)  # CPU bf16 kernels exist in every supported torch
    assert not dtype_works(torch.int64)  # no softmax/backward for integers


def fake_clock(*readings: float):
    """A clock that returns ``readings`` in order: the timing arithmetic without timing anything."""
    it = iter(readings)
    return lambda: next(it)


def test_matmul_peak_is_the_best_trial_in_flops_per_second():
    """size 4: 2 * 4**3 = 128 FLOPs per product. Trial 1 runs products until 0.25 s have passed: reads 0.0 at the
    start, 0.1 after one product, 0.3 after two, so 256 FLOPs in 0.3 s; trial 2: one product in 0.25 s, 128 FLOPs.
    The best trial is the peak."""
    clock = fake_clock(0.0, 0.1, 0.3, 1.0, 1.25)
    peak = measure_matmul_peak("cpu", torch.float32, size=4, repeats=2, min_time_s=0.25, clock=clock)
    assert peak == pytest.approx(256 / 0.3)
    with pytest.raises(ValueError, match="must be positive"):
        measure_matmul_peak("cpu", size=0)
    with pytest.raises(ValueError, match="cannot multiply"):
        measure_matmul_peak("cpu", torch.bool, size=8)


def test_collect_environment_report(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    report = collect_environment("cpu", check_compile_works=False, peak_repeats=1, cpuinfo_path=path)
    assert report.devices[0] == "cpu"
    assert report.dtypes["float32"] and report.dtypes["bfloat16"]
    assert report.bf16_matrix_units and report.cpu_flags == sorted(report.cpu_flags)
    assert set(report.matmul_peak_gflops) == {"float32", "bfloat16"}
    assert all(v > 0 for v in report.matmul_peak_gflops.values())
    assert report.bf16_speedup == pytest.approx(
        report.matmul_peak_gflops["bfloat16"] / report.matmul_peak_gflops["float32"]
    )
    assert report.compile_works is None
    text = format_env_report(report)
    assert "bf16 matrix units (amx_bf16/avx512_bf16): yes" in text
    assert "torch.compile works: not checked" in text
    assert "matmul peak (measured): float32" in text


@pytest.mark.slow
def test_compile_check_runs_a_compiled_function():
    from llm_lab.core.train.device import compile_unsupported_reason
    from llm_lab.experiments.env import check_compile

    works, note = check_compile("cpu")
    if compile_unsupported_reason(torch.device("cpu")) is None:
        assert works, note
    else:
        assert not works and note
