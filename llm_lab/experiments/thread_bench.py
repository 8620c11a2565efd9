"""Is ``--threads auto`` as fast as the best fixed thread count, on an idle machine and next to a busy one?

Three workloads, each timed with 1 thread, 2 threads (every count from 1 to the physical cores, in fact) and
the count ``auto`` picks at that moment:

- ``train small``: training steps of the demo model (``scripts/p1_train_char.py``: 2 layers, 64 wide, context
  64, batch 16), through the real ``Trainer``;
- ``train 10M``: training steps of the 10M character model (6 layers, 384 wide, context 256);
- ``decode b1``: greedy batch-1 decoding with the KV cache from the 6x384 model of the decoding benchmark
  (GPT-2 vocabulary), through ``generate`` (its weight layout follows the thread count).

Two conditions, run by this module itself: ``idle`` (nothing started by us; other users of the machine are
whatever they are, so the observed idle cores and load are recorded next to the numbers) and ``busy`` (a
background Python process spinning in a loop, started before and stopped after). ``auto`` is resolved at the
start of each condition, exactly as a command does at start-up.

Settings are interleaved (1, 2, auto, then 2, auto, 1, ...) over the repeats and the median is kept, so a change
of background load hits every setting alike. Results: a markdown table of the time per unit and of each
setting's ratio to the best fixed count (``auto / best`` <= 1.10 is the goal), plus CSV.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llm_lab.experiments.tables import markdown_table, write_csv
from llm_lab.utils.io import atomic_write_text
from llm_lab.utils.threads import measure_idle_cores, physical_core_count, resolve_threads

__all__ = [
    "ThreadBenchConfig",
    "Workload",
    "busy_loop",
    "build_workloads",
    "measure_condition",
    "run_thread_benchmark",
    "thread_table",
    "write_thread_results",
]

#: The background load of the ``busy`` condition: one process that never sleeps.
BUSY_LOOP_CODE = "while True:\n    pass\n"


@dataclass
class Workload:
    """One thing to time: ``run()`` does ``units`` units of work (steps or tokens)."""

    name: str
    unit: str
    units: int
    run: Callable[[], Any]


@dataclass
class ThreadBenchConfig:
    """What to measure. ``quick`` sizes finish in about a minute or two on 2 cores."""

    small_steps: int = 60
    big_steps: int = 4
    big_batch: int = 8
    decode_tokens: int = 64
    repeats: int = 3
    conditions: tuple[str, ...] = ("idle", "busy")
    fixed_threads: tuple[int, ...] = field(default_factory=tuple)  # default: 1 .. physical cores

    @classmethod
    def quick(cls) -> ThreadBenchConfig:
        return cls(small_steps=15, big_steps=1, big_batch=4, decode_tokens=16, repeats=2)

    def validate(self) -> None:
        for name in ("small_steps", "big_steps", "big_batch", "decode_tokens", "repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        unknown = [c for c in self.conditions if c not in ("idle", "busy")]
        if unknown or not self.conditions:
            raise ValueError(f"conditions must be idle and/or busy, got {list(self.conditions)}")
        if any(not isinstance(n, int) or n < 1 for n in self.fixed_threads):
            raise ValueError(f"fixed thread counts must be positive integers, got {list(self.fixed_threads)}")


@contextlib.contextmanager
def busy_loop() -> Iterator[subprocess.Popen]:
    """A background Python process spinning on one core for the duration of the block (always stopped)."""
    process = subprocess.Popen([sys.executable, "-c", BUSY_LOOP_CODE], stdin=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _training_workload(name: str, model_config: Any, batch_size: int, steps: int, seed: int = 0) -> Workload:
    from llm_lab.core.data import LanguageModelingDataset
    from llm_lab.core.model.gpt import MiniGPT
    from llm_lab.core.train import Trainer, TrainerConfig

    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model_config.vocab_size, (model_config.context_length * 64,), generator=generator)
    data = LanguageModelingDataset(tokens.tolist(), model_config.context_length)
    torch.manual_seed(seed)
    model = MiniGPT(model_config)
    config = TrainerConfig(
        batch_size=batch_size, max_steps=steps, warmup_steps=0, eval_interval=steps, log_interval=steps,
        precision="fp32", device="cpu", peak_flops=1e12, seed=seed, threads=None,  # the bench sets the threads
    )  # fmt: skip

    def run() -> None:
        Trainer(model, config, data, progress=False).train()

    return Workload(name, "step", steps, run)


def _decode_workload(tokens: int, seed: int = 0) -> Workload:
    from llm_lab.core.decode import generate
    from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig

    torch.manual_seed(seed)
    model = MiniGPT(MiniGPTConfig(vocab_size=50257, context_length=128, n_layer=6, n_head=6, n_embd=384)).eval()
    prompt = list(range(1, 17))

    def run() -> None:
        generate(model, prompt, tokens, temperature=0, threads=None)  # the bench sets the threads

    return Workload("decode b1 (6x384, vocab 50257)", "token", tokens, run)


def build_workloads(config: ThreadBenchConfig) -> list[Workload]:
    """The three workloads of the module docstring, sized by ``config``."""
    from llm_lab.core.model.gpt import MiniGPTConfig
    from llm_lab.experiments.step_bench import default_10m_config

    small = MiniGPTConfig(vocab_size=65, context_length=64, n_layer=2, n_head=4, n_embd=64)
    return [
        _training_workload("train small (2x64, batch 16)", small, 16, config.small_steps),
        _training_workload(f"train 10M (6x384, batch {config.big_batch})", default_10m_config(), config.big_batch,
                           config.big_steps),
        _decode_workload(config.decode_tokens),
    ]  # fmt: skip


def measure_condition(
    workloads: Sequence[Workload],
    settings: Sequence[int],
    repeats: int,
    *,
    set_threads: Callable[[int], None] = torch.set_num_threads,
    clock: Callable[[], float] = time.perf_counter,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[int, float]]:
    """Median seconds per unit of each workload at each thread count.

    Each workload first runs once untimed at each setting (allocations, the first-call costs); then ``repeats``
    rounds time every setting, in an order rotated each round.

    Returns:
        ``{workload name: {threads: seconds per unit}}``.
    """
    results: dict[str, dict[int, float]] = {}
    settings = list(dict.fromkeys(settings))
    for workload in workloads:
        for threads in settings:
            set_threads(threads)
            workload.run()
        times: dict[int, list[float]] = {n: [] for n in settings}
        for r in range(repeats):
            for threads in settings[r % len(settings):] + settings[: r % len(settings)]:
                set_threads(threads)
                start = clock()
                workload.run()
                times[threads].append((clock() - start) / workload.units)
        results[workload.name] = {n: statistics.median(values) for n, values in times.items()}
        if progress is not None:
            timed = ", ".join(f"{n} thr {t * 1e3:.2f} ms" for n, t in results[workload.name].items())
            progress(f"{workload.name}: {timed} per {workload.unit}")
    return results


def _observe() -> dict[str, Any]:
    idle = measure_idle_cores(seconds=0.5)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "idle_cores": None if idle is None else round(idle, 2),
        "load_1min": None if load is None else round(load, 2),
    }


def run_thread_benchmark(
    config: ThreadBenchConfig, progress: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Run every condition; one row per (condition, workload) with times, ratios and the observed load."""
    config.validate()
    fixed = list(config.fixed_threads) or list(range(1, physical_core_count() + 1))
    if len(fixed) == 1:
        fixed.append(2)  # "1 vs 2" is the question even on a 1-core machine
    before = torch.get_num_threads()
    workloads = build_workloads(config)
    rows: list[dict[str, Any]] = []
    try:
        for condition in config.conditions:
            with busy_loop() if condition == "busy" else contextlib.nullcontext():
                if condition == "busy":
                    time.sleep(0.5)  # let the loop start spinning before anything is observed
                seen = _observe()
                auto = resolve_threads("auto")
                if progress is not None:
                    progress(f"{condition}: idle cores {seen['idle_cores']}, load {seen['load_1min']}, auto -> {auto}")
                times = measure_condition(workloads, [*fixed, auto], config.repeats, progress=progress)
                seen_after = _observe()
            for workload in workloads:
                per_unit = times[workload.name]
                best = min(per_unit[n] for n in fixed)
                row: dict[str, Any] = {"condition": condition, "workload": workload.name, "auto threads": auto}
                for n in fixed:
                    row[f"{n} thr / best"] = per_unit[n] / best
                row["auto / best"] = per_unit[auto] / best
                for n in fixed:
                    row[f"ms/unit {n} thr"] = per_unit[n] * 1e3
                row["unit"] = workload.unit
                row["idle cores before/after"] = f"{seen['idle_cores']}/{seen_after['idle_cores']}"
                row["load 1 min"] = seen["load_1min"]
                rows.append(row)
    finally:
        torch.set_num_threads(before)
    return rows


def thread_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table (ratios to 3 significant figures)."""
    return markdown_table(list(rows), digits=3)


def write_thread_results(rows: Sequence[dict[str, Any]], out_dir: str | Path, note: str = "") -> dict[str, Path]:
    """``threads.csv`` and ``threads.md`` (the table, after ``note``) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "threads.md"
    atomic_write_text(md, f"# --threads auto vs fixed counts\n\n{note}\n\n{thread_table(rows)}")
    return {"csv": write_csv(out / "threads.csv", list(rows)), "md": md}
