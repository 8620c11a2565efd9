"""What ``precision="auto"`` means on a CPU: bf16 autocast only where it is known to be faster than fp32.

bf16 autocast on a CPU runs the matrix products in bf16 and everything else (norms, softmax, loss, the
optimizer) in fp32, casting between the two around every product. Whether that pays off depends on two things:

1. **The hardware.** Only CPUs with bf16 matrix instructions multiply bf16 faster than fp32: x86 CPUs listing
   ``amx_bf16`` (Intel AMX tiles, Sapphire Rapids and later) or ``avx512_bf16`` (Intel Cooper Lake and later,
   AMD Zen 4 and later) in ``/proc/cpuinfo``. Elsewhere bf16 is emulated and slower than fp32. A small matrix
   product timed in both dtypes (:func:`probe_bf16_speedup`) confirms that this PyTorch build actually uses
   those units.
2. **The model's size.** The casts cost memory traffic proportional to the activations, the saving is
   proportional to the matrix products, which grow with the width. Measured on a 2-core AMD EPYC (Zen 4,
   ``avx512_bf16``) with torch 2.13, one training step, bf16 autocast over fp32:

   ==============================================  =================================
   model (batch x context)                         bf16 autocast speed / fp32
   ==============================================  =================================
   4 layers, 128 wide, 0.8M parameters (16 x 64)   0.95 - 1.3 (no reliable gain)
   4 layers, 192 wide, 1.8M (32 x 64)              about 1.3
   4 layers, 256 wide, 3.2M (32 x 64)              about 1.5
   6 layers, 384 wide, 10.8M (16 x 256)            1.3 - 1.7
   ==============================================  =================================

   (medians of interleaved repeats on a machine shared with other jobs, so only roughly repeatable),
   so bf16 is chosen from :data:`MIN_BF16_WIDTH` = 256 upwards, where it was clearly faster.

:func:`choose_cpu_precision` is the single place this decision is made; the Trainer reaches it through
``llm_lab.core.train.device.resolve_precision`` for ``precision="auto"`` on CPU. An explicit ``"bf16"`` or
``"fp32"`` in the config is always obeyed.

**CPUs without bf16 units** (AVX2-only x86: most laptops and many cloud CPUs) run bf16 products emulated, many
times slower than fp32 (measured on one: a bf16 matmul peak of 1.0 GFLOP/s, a training step 18x slower).
:func:`cpu_bf16_slowdown` is the one place that decides a CPU is such a one (no bf16 flag, and a timed product
confirms bf16 is slower); an explicit ``bf16`` there still runs, after one warning per process with the measured
ratio (:func:`warn_if_cpu_bf16_is_slow`), and ``llm-lab bench step`` leaves bf16 out of its defaults.
"""

from __future__ import annotations

import functools
import threading
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch

__all__ = [
    "BF16_CPU_FLAGS",
    "MIN_BF16_SPEEDUP",
    "MIN_BF16_WIDTH",
    "choose_cpu_precision",
    "cpu_bf16_flags",
    "cpu_bf16_slowdown",
    "has_bf16_matrix_units",
    "model_width",
    "probe_bf16_speedup",
    "read_cpu_flags",
    "warn_if_cpu_bf16_is_slow",
]

# /proc/cpuinfo flags meaning "bf16 matrix arithmetic in hardware" (x86 names).
BF16_CPU_FLAGS: tuple[str, ...] = ("amx_bf16", "avx512_bf16")
# Narrower models spend more on autocast's casts than they save on bf16 products (see the module table).
MIN_BF16_WIDTH = 256
# The probe must show at least this gain of bf16 products over fp32 ones; below it the casts eat the gain.
MIN_BF16_SPEEDUP = 1.5


def read_cpu_flags(cpuinfo_path: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """Every CPU feature flag ``/proc/cpuinfo`` lists; empty where the file does not exist (macOS, Windows).

    Reads the first ``flags`` line (x86) or ``Features`` line (ARM): it describes every core on the machines
    this lab runs on. The one place the project parses ``/proc/cpuinfo`` flags (``llm-lab bench env`` reports
    them through this function too).
    """
    try:
        text = Path(cpuinfo_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def has_bf16_matrix_units(flags: Iterable[str]) -> bool:
    """True when ``flags`` name a bf16 matrix unit (one of :data:`BF16_CPU_FLAGS`)."""
    return not frozenset(flags).isdisjoint(BF16_CPU_FLAGS)


def cpu_bf16_flags(cpuinfo_path: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The bf16 matrix-unit flags (of :data:`BF16_CPU_FLAGS`) this CPU reports; empty where unknown.

    On systems without ``/proc/cpuinfo`` the answer is empty, so ``auto`` stays fp32 there.
    """
    return read_cpu_flags(cpuinfo_path) & frozenset(BF16_CPU_FLAGS)


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def probe_bf16_speedup(width: int, rows: int = 256, repeats: int = 3) -> float:
    """How many times faster a ``(rows, width) @ (width, 4 * width)`` product runs in bf16 than in fp32 here.

    That is the shape of a Transformer MLP's first product on ``rows`` tokens. Each dtype is timed ``repeats``
    times and the best time kept (on a shared machine the slow trials measure the neighbours). Takes tens of
    milliseconds and is cached per process and shape.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, width, generator=generator)
    b = torch.randn(width, 4 * width, generator=generator)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        a_, b_ = a.to(dtype), b.to(dtype)
        a_ @ b_  # first call: kernel selection and lazy initialisation, not timed
        times[dtype] = _best_time(lambda a_=a_, b_=b_: a_ @ b_, repeats)
    return times[torch.float32] / max(times[torch.bfloat16], 1e-12)


def model_width(model: torch.nn.Module | None) -> int | None:
    """The width (``config.n_embd``) of a MiniGPT-like model; ``None`` when it has no such config."""
    width = getattr(getattr(model, "config", None), "n_embd", None)
    return int(width) if isinstance(width, int) else None


def choose_cpu_precision(
    width: int | None,
    *,
    flags: Iterable[str] | None = None,
    speedup: float | None = None,
) -> str:
    """``"bf16"`` or ``"fp32"``: the precision ``auto`` trains a model of this width in on this CPU.

    bf16 is chosen only when all three hold:

    1. the CPU reports a bf16 matrix unit (``amx_bf16`` or ``avx512_bf16``);
    2. the model is at least :data:`MIN_BF16_WIDTH` wide (unknown width: fp32);
    3. a bf16 product at that width measured at least :data:`MIN_BF16_SPEEDUP` times faster than fp32.

    Args:
        width: the model width (``n_embd``), or ``None`` when unknown.
        flags: the CPU's bf16 flags; ``None`` reads them (:func:`cpu_bf16_flags`).
        speedup: the measured bf16/fp32 speed ratio; ``None`` measures it (:func:`probe_bf16_speedup`), only
            when the first two conditions already hold.

    Returns:
        ``"bf16"`` where it is faster, else ``"fp32"``.

    Under DDP every process decides for itself; on identical machines they agree unless the probe lands right
    at the threshold, and even then only the speed differs (weights, gradients and optimizer state are fp32).
    """
    flags = cpu_bf16_flags() if flags is None else frozenset(flags)
    if not has_bf16_matrix_units(flags):
        return "fp32"
    if width is None or width < MIN_BF16_WIDTH:
        return "fp32"
    if speedup is None:
        speedup = probe_bf16_speedup(width)
    return "bf16" if speedup >= MIN_BF16_SPEEDUP else "fp32"


def cpu_bf16_slowdown() -> float | None:
    """How many times slower bf16 matrix products run than fp32 ones on this CPU, where bf16 is emulated;
    ``None`` where it is not (a bf16 unit, or bf16 measured no slower).

    The one detection of a CPU without bf16 units: no :data:`BF16_CPU_FLAGS` flag (:func:`cpu_bf16_flags`), then
    confirmed by timing a small product in both dtypes (:func:`probe_bf16_speedup`, cached), so an ARM CPU with
    bf16 instructions (whose flag is not listed) is not reported. Tests replace those two functions.
    """
    if has_bf16_matrix_units(cpu_bf16_flags()):
        return None
    speedup = probe_bf16_speedup(128)
    return 1.0 / speedup if speedup < 1.0 else None


_warned = False
_warned_lock = threading.Lock()


def warn_if_cpu_bf16_is_slow(what: str = "precision bf16") -> float | None:
    """Warn once per process when bf16 is asked for on a CPU that emulates it (:func:`cpu_bf16_slowdown`).

    Args:
        what: what asked for bf16, named in the warning (``precision bf16``, ``bench step --precisions bf16``).

    Returns:
        The slowdown, or ``None`` where bf16 is not slow here.
    """
    global _warned
    slowdown = cpu_bf16_slowdown()
    with _warned_lock:
        if slowdown is None or _warned:
            return slowdown
        _warned = True
    warnings.warn(
        f"{what} on a CPU without bf16 units (no {' or '.join(BF16_CPU_FLAGS)} flag): a bf16 matrix product ran "
        f"{slowdown:.1f}x slower than fp32 here; use fp32 (precision fp32, or auto, which picks fp32 here)",
        stacklevel=2,
    )
    return slowdown
