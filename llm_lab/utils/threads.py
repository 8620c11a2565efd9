"""How many CPU threads torch uses: a fixed number, or ``auto``, chosen from the cores that are free right now.

Why ``auto`` looks at the machine instead of taking torch's default (one thread per physical core): a laptop
always runs something else, and torch's intra-op threads wait for each other at every operation. When another
process holds one of two cores, the thread that shares a core with it stalls every step of the others. Measured
on a 2-core machine with one other CPU-bound process: the demo training run took 46 s with 2 threads and 14.5 s
with 1; greedy decoding of a 6x384 model fell from 149 to 20 tokens/s. On the same machine idle, 2 threads are
faster for the 10M model. So ``auto`` counts the cores that were idle over a short window at start-up
(``/proc/stat``, about 0.1 s) and uses that many threads, at least one and at most the physical cores torch
would use. The system load average cannot do this: it averages over a minute and lags behind.

``scripts/bench_threads.py`` measures ``auto`` against 1 and 2 threads on an idle machine and next to a busy
loop (``llm_lab.experiments.thread_bench``).

Everything that reads the machine takes its readings as arguments (``read_stat``, ``sleep``, ``cpuinfo``), so
the arithmetic is tested with made-up readings.

One rule for the command line and the library (:func:`settle_threads`): the ``Trainer``, ``generate``/``stream``
and ``evaluate_text`` take ``threads="auto"`` by default, as ``llm-lab`` does. ``auto`` is settled once per
process: the first entry point that meets it applies :func:`default_threads` (``LLM_LAB_THREADS``, else torch's
own ``OMP_NUM_THREADS`` choice, else one thread per idle core); later ``auto`` calls, and every call after an
explicit number or ``llm-lab --threads``, keep what is set, so a loop of ``generate`` calls measures nothing. A
number sets that many threads; ``None`` keeps the process setting untouched (for a caller who set
``torch.set_num_threads`` themselves).
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

__all__ = [
    "AUTO",
    "MIN_IDLE_FRACTION",
    "SAMPLE_SECONDS",
    "THREADS_ENV",
    "Threads",
    "apply_threads",
    "auto_threads",
    "default_threads",
    "idle_cores",
    "measure_idle_cores",
    "parse_proc_stat",
    "parse_threads",
    "physical_core_count",
    "physical_cores",
    "resolve_threads",
    "settle_threads",
    "usable_cpus",
]

AUTO = "auto"
#: The environment variable for a machine-wide preference (``N`` or ``auto``), read by :func:`default_threads`.
THREADS_ENV = "LLM_LAB_THREADS"
#: A thread count, or ``"auto"`` (see the module docstring).
Threads = int | Literal["auto"]

#: How long ``auto`` watches the CPUs. /proc/stat counts in 1/100 s ticks, so 0.1 s gives 10 ticks per CPU:
#: enough to tell a busy core from an idle one, short enough not to be noticed at start-up.
SAMPLE_SECONDS = 0.1

#: A core counts as free when at least this fraction of it was idle. Below 1 because the window is short and
#: desktops always have some background activity; above 0.5 because an extra thread on a busy core costs far
#: more (up to 10x) than one thread too few on a free core (at most the speed-up of that one core).
MIN_IDLE_FRACTION = 0.6


def parse_threads(value: str | int) -> Threads:
    """``"auto"`` or a positive integer, from a flag, a config value or an environment variable.

    Raises:
        ValueError: anything else; the message says what is accepted.
    """
    if isinstance(value, bool):
        raise ValueError(f"threads must be 'auto' or a positive integer, got {value!r}")
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"threads must be 'auto' or a positive integer, got {value!r}") from None
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"threads must be 'auto' or a positive integer, got {value!r}")
    return value


def parse_proc_stat(text: str) -> dict[int, tuple[int, int]]:
    """Per CPU of a ``/proc/stat`` text: ``cpu index -> (idle ticks, total ticks)``.

    Idle counts ``idle`` and ``iowait`` (a CPU waiting for the disk is free to run a thread); total is the sum of
    every column up to ``steal`` (``guest`` time is already counted inside ``user``).
    """
    times: dict[int, tuple[int, int]] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        try:
            index = int(name[3:])
            fields = [int(v) for v in rest.split()]
        except ValueError:
            continue
        if len(fields) < 4:
            continue
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        times[index] = (idle, sum(fields[:8]))
    return times


def idle_cores(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpus: Iterable[int]
) -> float:
    """How many of ``cpus`` were idle between two readings, as a sum of per-CPU idle fractions.

    A sum, not a count of idle CPUs, because the scheduler moves a busy process between CPUs: one process
    spinning on two CPUs shows as two half-idle CPUs, which is one free core. A CPU without ticks in the window
    (or missing from a reading) counts as idle: nothing was seen running on it.
    """
    total = 0.0
    for cpu in cpus:
        if cpu not in before or cpu not in after:
            total += 1.0
            continue
        idle = after[cpu][0] - before[cpu][0]
        ticks = after[cpu][1] - before[cpu][1]
        total += 1.0 if ticks <= 0 else min(1.0, max(0.0, idle / ticks))
    return total


def _read_proc_stat() -> str:
    return Path("/proc/stat").read_text(encoding="ascii", errors="replace")


def usable_cpus() -> list[int]:
    """The CPU indices this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def measure_idle_cores(
    cpus: Iterable[int] | None = None,
    *,
    seconds: float = SAMPLE_SECONDS,
    read_stat: Callable[[], str] = _read_proc_stat,
    sleep: Callable[[float], None] = time.sleep,
) -> float | None:
    """Idle cores among ``cpus`` (default: :func:`usable_cpus`) over ``seconds``; ``None`` where the OS has no
    ``/proc/stat`` (macOS, Windows) or it cannot be read."""
    cpus = list(usable_cpus() if cpus is None else cpus)
    try:
        before = parse_proc_stat(read_stat())
        sleep(seconds)
        after = parse_proc_stat(read_stat())
    except OSError:
        return None
    if not before or not after:
        return None
    return idle_cores(before, after, cpus)


def physical_cores(cpuinfo: str, cpus: Iterable[int]) -> int | None:
    """Distinct physical cores among logical ``cpus``, from a ``/proc/cpuinfo`` text; ``None`` if it does not say.

    Two hyperthreads of one core share its arithmetic units, so torch uses one thread per physical core; so does
    ``auto``.
    """
    wanted = set(cpus)
    cores: set[tuple[str, str]] = set()
    for block in cpuinfo.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "processor" not in fields or "core id" not in fields:
            continue
        try:
            processor = int(fields["processor"])
        except ValueError:
            continue
        if processor in wanted:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores) or None


def physical_core_count(cpus: Sequence[int] | None = None) -> int:
    """Physical cores among ``cpus`` (default: :func:`usable_cpus`) from ``/proc/cpuinfo``; where it does not
    say, the number of logical CPUs."""
    cpus = list(usable_cpus() if cpus is None else cpus)
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return len(cpus)
    return min(len(cpus), physical_cores(text, cpus) or len(cpus))


def auto_threads(idle: float | None, max_threads: int) -> int:
    """The ``auto`` choice: one thread per free core (see :data:`MIN_IDLE_FRACTION`), from 1 to ``max_threads``.

    Args:
        idle: idle cores from :func:`measure_idle_cores`; ``None`` (unknown) gives ``max_threads``, torch's own
            choice.
        max_threads: the most threads worth running (the physical cores this process may use).
    """
    if max_threads < 1:
        raise ValueError(f"max_threads must be at least 1, got {max_threads}")
    if idle is None:
        return max_threads
    free = math.floor(idle + 1.0 - MIN_IDLE_FRACTION)
    return max(1, min(max_threads, free))


@functools.cache
def _warn_capped(setting: int, cpus: int) -> None:
    """Say once per process that ``setting`` threads were capped (the CLI and the trainer both apply it)."""
    warnings.warn(f"threads={setting} is more than the {cpus} CPUs this process may use; using {cpus}", stacklevel=4)


def resolve_threads(
    setting: Threads,
    *,
    measure: Callable[[], float | None] | None = None,
    max_threads: int | None = None,
) -> int:
    """The thread count ``setting`` stands for: itself if a number, else :func:`auto_threads` of a measurement.

    Args:
        setting: a positive integer or ``"auto"`` (validated with :func:`parse_threads`). A number above the
            CPUs this process may use (:func:`usable_cpus`) is capped to them, with a warning.
        measure: returns the idle cores (default: :func:`measure_idle_cores` over the usable CPUs).
        max_threads: the cap for ``auto`` (default: the physical cores among the usable CPUs).
    """
    setting = parse_threads(setting)
    cpus = usable_cpus()
    if setting != AUTO:
        if setting > len(cpus):
            # More threads than CPUs only makes them wait for each other at every operation (--threads 1000 ran
            # 240x slower); a config written on a bigger machine still runs, at the cores this one has.
            _warn_capped(setting, len(cpus))
            return len(cpus)
        return setting
    if max_threads is None:
        max_threads = physical_core_count(cpus)
    idle = measure() if measure is not None else measure_idle_cores(cpus)
    return auto_threads(idle, max_threads)


def apply_threads(setting: Threads, **resolve_kwargs) -> int:
    """Set torch's intra-op CPU threads from ``setting`` (see :func:`resolve_threads`; ``auto`` measures now) and
    return the count. Later ``auto`` settings of the library keep it (:func:`settle_threads`)."""
    global _settled
    with _settle_lock:
        _settled = True
        return _apply(setting, **resolve_kwargs)


# Whether llm-lab has set this process's threads already (see settle_threads); guarded, as the server calls
# generate from a worker thread.
_settled = False
_settle_lock = threading.Lock()


def default_threads(environ: Mapping[str, str] | None = None) -> Threads | None:
    """What ``auto`` stands for where nobody named a number: ``$LLM_LAB_THREADS`` (``N`` or ``auto``) when set;
    else ``None`` (leave torch alone) when ``$OMP_NUM_THREADS`` is set, as ``torchrun`` does (1 per process) and
    torch already follows it; else ``"auto"`` (measure).

    Raises:
        ValueError: ``LLM_LAB_THREADS`` holds something other than ``auto`` or a positive integer.
    """
    environ = os.environ if environ is None else environ
    if environ.get(THREADS_ENV, "").strip():
        try:
            return parse_threads(environ[THREADS_ENV])
        except ValueError as e:
            raise ValueError(f"{THREADS_ENV}: {e}") from None
    if environ.get("OMP_NUM_THREADS", "").strip():
        return None
    return AUTO


def settle_threads(setting: Threads | None, *, environ: Mapping[str, str] | None = None, **resolve_kwargs) -> int:
    """The library's thread rule (module docstring), for each entry point's ``threads`` argument.

    Args:
        setting: a number (applied), ``"auto"`` (the first time in this process: :func:`default_threads` applied;
            later: kept), or ``None`` (the process setting, untouched).
        environ: where :func:`default_threads` reads (default: ``os.environ``).
        **resolve_kwargs: passed to :func:`resolve_threads` (tests inject a measurement).

    Returns:
        torch's thread count after the call.
    """
    global _settled
    import torch

    if setting is None:
        return torch.get_num_threads()
    setting = parse_threads(setting)
    with _settle_lock:
        if setting == AUTO:
            if _settled:
                return torch.get_num_threads()
            chosen = default_threads(environ)
            _settled = True
            return torch.get_num_threads() if chosen is None else _apply(chosen, **resolve_kwargs)
        _settled = True
        return _apply(setting, **resolve_kwargs)


def _apply(setting: Threads, **resolve_kwargs) -> int:
    import torch

    threads = resolve_threads(setting, **resolve_kwargs)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
