"""What this machine offers for training: devices, working dtypes, bf16 matrix units, ``torch.compile``, peaks.

``collect_environment`` probes everything and returns an :class:`EnvReport`; ``format_env_report`` prints it.
Every probe runs a real (small) computation instead of trusting a capability flag: a dtype "works" when a
matrix product, a softmax and a backward pass in it run and give finite numbers; ``torch.compile`` "works"
when a compiled function runs and matches eager.

bf16 matrix units: on x86 CPUs the ``amx_bf16`` flag (Intel AMX tiles) and ``avx512_bf16`` (bf16 dot-product
instructions, Intel Cooper Lake and later, AMD Zen 4 and later) in ``/proc/cpuinfo`` say the hardware has
them; the measured bf16/fp32 matmul ratio says whether PyTorch's kernels actually use them here. A ratio well
above 1 is the reason to train in bf16 on this CPU.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from llm_lab.core.train.device import select_device
from llm_lab.core.train.flops import measure_matmul_peak
from llm_lab.core.train.precision import (  # one cpuinfo reader and flag list, shared with precision="auto"
    BF16_CPU_FLAGS,
    MIN_BF16_SPEEDUP,
    has_bf16_matrix_units,
    read_cpu_flags,
)
from llm_lab.utils.devices import mps_available, resolve_device
from llm_lab.utils.words import plural

# Flags worth reporting next to BF16_CPU_FLAGS: the vector width the fp32 kernels run on, AMX tile support.
REPORTED_CPU_FLAGS: tuple[str, ...] = ("avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8") + BF16_CPU_FLAGS
PROBED_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


@dataclass
class EnvReport:
    """The result of :func:`collect_environment` (every field JSON-serialisable)."""

    python: str
    torch: str
    platform: str
    cpu_model: str
    cpu_count: int
    torch_threads: int
    cpu_capability: str
    devices: list[str]
    device: str
    dtypes: dict[str, bool]
    cpu_flags: list[str]
    bf16_matrix_units: bool
    matmul_peak_gflops: dict[str, float] = field(default_factory=dict)
    bf16_speedup: float | None = None
    compile_works: bool | None = None
    compile_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_cpu_model(cpuinfo_path: str | Path = "/proc/cpuinfo") -> str:
    """A human-readable CPU name (``/proc/cpuinfo``'s model name, else ``platform.processor()``)."""
    try:
        for line in Path(cpuinfo_path).read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_devices() -> list[str]:
    """Every device PyTorch can use here, e.g. ``["cpu", "cuda:0 (NVIDIA H100)"]``."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if mps_available():
        devices.append("mps")
    return devices


def default_device() -> str:
    """The device a training run would pick: cuda > mps > cpu (``train.device="auto"``)."""
    return select_device("auto").type


def dtype_works(dtype: torch.dtype, device: str | torch.device = "cpu") -> bool:
    """Whether a matmul, a softmax and a backward pass run in ``dtype`` on ``device`` and stay finite."""
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(16, 32, generator=generator).to(device=device, dtype=dtype).requires_grad_()
        b = torch.randn(32, 16, generator=generator).to(device=device, dtype=dtype)
        out = torch.softmax(a @ b, dim=-1).sum()
        out.backward()
        return bool(torch.isfinite(out).item()) and bool(torch.isfinite(a.grad).all().item())
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def check_compile(device: str | torch.device = "cpu") -> tuple[bool, str]:
    """Compile a small function with ``torch.compile`` and compare it with eager.

    Returns:
        ``(works, note)``: ``note`` holds the error (first line) when it fails, or the compile time.
    """

    def fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x @ w) + x.sin()

    x = torch.randn(8, 8, device=device)
    w = torch.randn(8, 8, device=device)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = torch.compile(fn, fullgraph=True)
            got = compiled(x, w)
    except Exception as e:  # compile can fail in many ways (no compiler, unsupported platform): report, not raise
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return False, f"{type(e).__name__}: {first_line[:200]}"
    if not torch.allclose(got, fn(x, w), atol=1e-5, rtol=1e-5):
        return False, "compiled result differs from eager"
    return True, f"compiled in {time.perf_counter() - start:.1f} s"


def collect_environment(
    device: str | None = None,
    *,
    measure_peak: bool = True,
    check_compile_works: bool = True,
    peak_repeats: int = 5,
    cpuinfo_path: str | Path = "/proc/cpuinfo",
) -> EnvReport:
    """Probe the machine.

    Args:
        device: the device whose dtypes, peak and compile support are measured (default: cuda > mps > cpu).
        measure_peak: measure the fp32 and bf16 matmul peaks (about a second each on a CPU).
        check_compile_works: try ``torch.compile`` (tens of seconds the first time on a CPU: it builds C++).
        peak_repeats: trials for each peak measurement (the best is kept).
        cpuinfo_path: where the CPU flags are read from (tests point it at a made-up file).

    Returns:
        An :class:`EnvReport`.

    Raises:
        ValueError: ``device`` is not a device name, or not one this machine has.
    """
    device = device or default_device()
    resolve_device(device)  # a typo would otherwise report every dtype as "not working"
    flags = read_cpu_flags(cpuinfo_path)
    dtypes = {name: dtype_works(getattr(torch, name), device) for name in PROBED_DTYPES}
    report = EnvReport(
        python=sys.version.split()[0],
        torch=torch.__version__,
        platform=platform.platform(),
        cpu_model=read_cpu_model(cpuinfo_path),
        cpu_count=os.cpu_count() or 1,
        torch_threads=torch.get_num_threads(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        devices=available_devices(),
        device=device,
        dtypes=dtypes,
        cpu_flags=sorted(flag for flag in REPORTED_CPU_FLAGS if flag in flags),
        bf16_matrix_units=has_bf16_matrix_units(flags),
    )
    if measure_peak:
        for name in ("float32", "bfloat16"):
            if dtypes[name]:
                peak = measure_matmul_peak(device, getattr(torch, name), repeats=peak_repeats)
                report.matmul_peak_gflops[name] = peak / 1e9
        if "float32" in report.matmul_peak_gflops and "bfloat16" in report.matmul_peak_gflops:
            report.bf16_speedup = report.matmul_peak_gflops["bfloat16"] / report.matmul_peak_gflops["float32"]
    if check_compile_works:
        report.compile_works, report.compile_note = check_compile(device)
    return report


def format_env_report(report: EnvReport) -> str:
    """A short, human-readable report of :func:`collect_environment`'s findings."""

    def yes_no(value: bool | None) -> str:
        return "not checked" if value is None else ("yes" if value else "no")

    lines = [
        f"python {report.python}, torch {report.torch}, {report.platform}",
        f"cpu: {report.cpu_model} ({plural(report.cpu_count, 'logical core')}, torch uses "
        f"{plural(report.torch_threads, 'thread')}, "
        f"kernels for {report.cpu_capability})",
        f"devices: {', '.join(report.devices)}; measured on: {report.device}",
        "dtypes that work: " + ", ".join(f"{name} {yes_no(ok)}" for name, ok in report.dtypes.items()),
        f"cpu flags: {' '.join(report.cpu_flags) or '(none of interest)'}",
        f"bf16 matrix units (amx_bf16/avx512_bf16): {yes_no(report.bf16_matrix_units)}",
    ]
    if report.matmul_peak_gflops:
        peaks = ", ".join(f"{name} {gflops:.1f} GFLOP/s" for name, gflops in report.matmul_peak_gflops.items())
        lines.append(f"matmul peak (measured): {peaks}")
    if report.bf16_speedup is not None:
        verdict = "train in bf16" if report.bf16_speedup >= MIN_BF16_SPEEDUP else "bf16 gives little here; fp32 is fine"
        lines.append(f"bf16 / fp32 matmul speed: {report.bf16_speedup:.2f}x ({verdict})")
    compile_line = f"torch.compile works: {yes_no(report.compile_works)}"
    if report.compile_note:
        compile_line += f" ({report.compile_note})"
    lines.append(compile_line)
    return "\n".join(lines) + "\n"
