"""What a sweep asks of this machine: a wall-time budget turned into steps, and runs at a time sized to its cores
and memory.

With a time budget one run per setting is timed (:func:`measure_step_seconds`), the steps that fill the budget are
computed (:func:`budget_steps`) and the schedule is scaled to them (:func:`scale_schedule`); :func:`size_jobs`
lowers ``--jobs`` to the cores and to what memory allows at :func:`estimate_run_memory` per run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

from llm_lab.core.model.memory import estimate_memory
from llm_lab.core.train.run import PreparedRun
from llm_lab.utils.words import plural


def scale_schedule(train: Any, steps: int) -> Any:
    """The ``TrainerConfig`` with ``max_steps=steps`` and its schedule scaled by ``steps / max_steps``.

    Warmup, the cosine decay end, and the evaluation, logging, checkpoint and sample intervals scale alike, so a
    run of any length has the same schedule shape and the same number of evaluations.
    """
    if steps < 1:
        raise ValueError(f"a run needs at least one step, got {steps}")
    factor = steps / train.max_steps

    def scaled(value: int | None) -> int | None:
        return None if value is None else max(1, min(steps, round(value * factor)))

    return dataclasses.replace(
        train,
        max_steps=steps,
        warmup_steps=min(steps, round(train.warmup_steps * factor)),
        lr_decay_steps=scaled(train.lr_decay_steps),
        eval_interval=scaled(train.eval_interval),
        log_interval=scaled(train.log_interval),
        checkpoint_interval=scaled(train.checkpoint_interval),
        sample_interval=scaled(train.sample_interval) if train.sample_interval else 0,
    )


def measure_step_seconds(
    prepared: Sequence[PreparedRun], rounds: int = 3, probe_seconds: float = 0.5
) -> list[tuple[float, float]]:
    """Time a training step and an evaluation of each prepared run on this machine (nothing is written).

    The runs are timed in interleaved rounds (each round times every run once) and each gets the median of its
    rounds, so a neighbour that slows the machine for a while slows every setting alike instead of one of them.
    Each run first takes two warm-up steps (allocation, kernel choice); its probe is as many steps as fill about
    ``probe_seconds``.

    Returns:
        ``[(seconds per optimizer step, seconds per evaluation)]``, one per run.
    """
    from llm_lab.core.train.trainer import Trainer

    trainers, probes = [], []
    step_times: list[list[float]] = [[] for _ in prepared]
    eval_times: list[list[float]] = [[] for _ in prepared]
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        for run in prepared:
            train = dataclasses.replace(run.config.train, loggers=("csv",), sample_interval=0, compile=False)
            # No validation data while training: train() would evaluate at its last step; evaluate() is timed alone.
            trainer = Trainer(run.model, dataclasses.replace(train, max_steps=2), run.train_data, None,
                              out_dir=None, progress=False)  # fmt: skip
            trainer.train()
            start = time.perf_counter()
            trainer.config = dataclasses.replace(train, max_steps=trainer.step + 1)
            trainer.train()
            one_step = time.perf_counter() - start
            trainers.append(trainer)
            probes.append(max(1, min(200, round(probe_seconds / max(one_step, 1e-6)))))
        for _ in range(rounds):
            for i, (trainer, run) in enumerate(zip(trainers, prepared, strict=True)):
                trainer.config = dataclasses.replace(trainer.config, max_steps=trainer.step + probes[i])
                start = time.perf_counter()
                trainer.train()
                step_times[i].append((time.perf_counter() - start) / probes[i])
                trainer.val_data = run.val_data
                start = time.perf_counter()
                trainer.evaluate()
                eval_times[i].append(time.perf_counter() - start)
                trainer.val_data = None
    return [(statistics.median(s), statistics.median(e)) for s, e in zip(step_times, eval_times, strict=True)]


def budget_steps(train: Any, budget_s: float, step_s: float, eval_s: float) -> int:
    """The steps that fill ``budget_s`` seconds: the evaluations of the (scaled) schedule first, then steps.

    Raises:
        ValueError: the budget does not cover the evaluations and one step.
    """
    n_evals = math.ceil(train.max_steps / train.eval_interval)  # unchanged by scale_schedule
    steps = math.floor((budget_s - n_evals * eval_s) / step_s)
    if steps < 1:
        raise ValueError(
            f"--time-budget {budget_s:g}s is too short: {plural(n_evals, 'evaluation')} take "
            f"{n_evals * eval_s:.1f}s and a "
            f"step {step_s:.3f}s here; raise the budget or lower train.eval_batches"
        )
    return steps


def estimate_run_memory(prepared: PreparedRun) -> int:
    """Bytes of RAM one training process of this run needs (an upper estimate, to size ``--jobs``): the training
    estimate run preparation made (:func:`llm_lab.core.model.memory.estimate_memory`: weights, gradients, AdamW
    state, one micro-batch's activations) plus 400 MiB for the interpreter and torch itself."""
    memory = prepared.memory
    if memory is None:
        memory = estimate_memory(prepared.config.model, batch_size=prepared.config.train.batch_size, training=True)
    return memory.total_bytes + 400 * 2**20


def available_memory() -> int | None:
    """Bytes of memory available to new processes (``MemAvailable``), or ``None`` where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def size_jobs(
    jobs: int,
    cores: int,
    *,
    explicit_threads: bool = False,
    run_bytes: int | None = None,
    available_bytes: int | None = None,
    memory_share: float = 0.8,
) -> tuple[int, int | None, list[str]]:
    """How many runs go at once and with how many threads each, so the machine is never oversubscribed.

    At most one job per core; at most as many jobs as fit in ``memory_share`` of the available memory at
    ``run_bytes`` each. Each job gets ``cores // jobs`` threads; a single job without ``--threads`` keeps torch's
    own choice (``None``).

    Returns:
        ``(jobs, threads per job or None, notes saying what was lowered and why)``.
    """
    notes = []
    if jobs > cores:
        notes.append(f"--jobs {jobs} lowered to {cores}: one job per core at most (no oversubscription)")
        jobs = cores
    if jobs > 1 and run_bytes and available_bytes is not None and run_bytes * jobs > available_bytes * memory_share:
        fit = max(1, int(available_bytes * memory_share // run_bytes))
        notes.append(f"--jobs {jobs} lowered to {fit}: each run needs about {run_bytes / 2**20:,.0f} MiB and "
                     f"{available_bytes / 2**20:,.0f} MiB are available")  # fmt: skip
        jobs = fit
    threads = max(1, cores // jobs) if (jobs > 1 or explicit_threads) else None
    return jobs, threads, notes
