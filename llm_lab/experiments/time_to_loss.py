"""Time to a target validation loss: whole ``llm-lab train`` processes of two configs, side by side.

Each run is a separate ``python -m llm_lab train --config C --data D --out DIR --quiet`` process, timed from
start to exit, so start-up (imports, tokenisation, model building, the matmul-peak probe), evaluation and
checkpointing all count. From the run's ``metrics.csv``:

- ``elapsed_s`` of a row is the training time inside the process when that row was logged (before the
  evaluation of that step);
- ``overhead_s = wall_s - elapsed_s of the last row``: start-up, the last evaluation, the final checkpoint and
  exit, everything the in-process clock does not see;
- ``time_to_target_s = elapsed_s of the first evaluated row with val_loss <= target + overhead_s``: what a
  process that stopped right after reaching the target would have taken. For a run whose first such row is
  its last one it equals ``wall_s`` exactly.

Runs alternate (baseline, fast, baseline, fast, ...) over ``repeats`` rounds, so load from other processes on
a shared machine hits both alike; medians are reported. More configs can join the rotation (``--add
LABEL=CONFIG``, e.g. the 60-second recipe); each gets its ratio to the baseline and its median final validation
loss. A run that never reaches the target has no time to
target; its wall time is then a lower bound, and the ratio is reported as an upper bound (``<=``).
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llm_lab.core.train.metrics import read_metrics
from llm_lab.experiments.tables import markdown_table, write_csv
from llm_lab.utils.io import atomic_write_json, atomic_write_text
from llm_lab.utils.threads import THREADS_ENV, parse_threads

__all__ = [
    "DEFAULT_TARGET",
    "QUICK_OVERRIDES",
    "TimeToLossRun",
    "TimeToLossSummary",
    "first_eval_at_or_below",
    "run_training_process",
    "run_time_to_loss",
    "summarize",
    "write_time_to_loss_results",
]

DEFAULT_TARGET = 1.88
# --quick: a tiny model and a handful of steps, for checking the output format in seconds (not a benchmark).
QUICK_OVERRIDES: tuple[str, ...] = (
    "model.n_layer=1",
    "model.n_head=4",
    "model.n_kv_head=4",
    "model.n_embd=32",
    "model.context_length=16",
    "train.batch_size=4",
    "train.max_steps=6",
    "train.warmup_steps=2",
    "train.eval_interval=3",
    "train.eval_batches=2",
    "train.log_interval=3",
    "train.sample_interval=0",
    "train.peak_flops=1e9",
)
RUN_COLUMNS: tuple[str, ...] = (
    "name",
    "repeat",
    "wall_s",
    "overhead_s",
    "time_to_target_s",
    "step_at_target",
    "val_at_target",
    "final_val_loss",
    "steps",
    "tokens",
)


@dataclass
class TimeToLossRun:
    """One ``llm-lab train`` process and what its ``metrics.csv`` says about the target.

    Attributes:
        name: ``baseline`` or ``fast`` (or the label given).
        config: the config file it ran.
        out_dir: its run directory.
        repeat: the round (0-based).
        wall_s: process wall time, start to exit.
        overhead_s: ``wall_s`` minus the in-process ``elapsed_s`` of the last CSV row.
        time_to_target_s: ``elapsed_s`` of the first row with ``val_loss <= target`` plus ``overhead_s``;
            ``None`` when the target was never reached.
        step_at_target: the step of that row.
        val_at_target: its validation loss.
        final_val_loss: the validation loss of the last evaluation.
        steps: the last logged step.
        tokens: training tokens seen by then.
    """

    name: str
    config: str
    out_dir: str
    repeat: int
    wall_s: float
    overhead_s: float
    time_to_target_s: float | None
    step_at_target: int | None
    val_at_target: float | None
    final_val_loss: float | None
    steps: int
    tokens: int


@dataclass
class TimeToLossSummary:
    """Medians over the repeats of each config, and fast over baseline."""

    target: float
    runs: list[TimeToLossRun]
    median_time_to_target_s: dict[str, float | None]
    median_wall_s: dict[str, float]
    ratio: float | None
    ratio_is_upper_bound: bool
    wall_ratio: float | None
    environment: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float | None] = field(default_factory=dict)
    median_final_val_loss: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def first_eval_at_or_below(rows: Sequence[Mapping[str, str]], target: float) -> Mapping[str, str] | None:
    """The first ``metrics.csv`` row with a validation loss at or below ``target`` (``None`` if there is none)."""
    for row in rows:
        val = _float(row.get("val_loss"))
        if val is not None and val <= target:
            return row
    return None


def run_training_process(
    config: str | Path,
    data: str | Path,
    out_dir: str | Path,
    *,
    name: str,
    target: float,
    repeat: int = 0,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
) -> TimeToLossRun:
    """Run one ``llm-lab train`` process (a fresh ``out_dir``) and measure it.

    Args:
        config: the run config JSON.
        data: the text file (validation is the last ``data.val_fraction`` of it, 10% by default).
        out_dir: the run directory; an existing one is replaced.
        name: the label of this config in the results.
        target: the validation loss to reach.
        repeat: the round number, recorded.
        overrides: ``section.key=value`` strings passed as ``--set``.
        env: the child's environment (default: this process's).
        timeout_s: kill the process after this long.

    Raises:
        RuntimeError: the process failed (its last lines of output are in the message) or wrote no metrics.
    """
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, "-m", "llm_lab", "train", "--config", str(config), "--data", str(data)]
    command += ["--out", str(out), "--quiet"]
    for override in overrides:
        command += ["--set", override]
    start = time.perf_counter()
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else None,
        timeout=timeout_s,
        check=False,
    )
    wall_s = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise RuntimeError(f"llm-lab train --config {config} failed (exit {proc.returncode}):\n{tail}")
    metrics = out / "metrics.csv"
    rows = read_metrics(metrics) if metrics.is_file() else []
    if not rows:
        raise RuntimeError(f"{metrics} holds no rows; the run logged nothing")
    last = rows[-1]
    overhead_s = wall_s - float(last["elapsed_s"])
    hit = first_eval_at_or_below(rows, target)
    evals = [row for row in rows if _float(row.get("val_loss")) is not None]
    return TimeToLossRun(
        name=name,
        config=str(config),
        out_dir=str(out),
        repeat=repeat,
        wall_s=wall_s,
        overhead_s=overhead_s,
        time_to_target_s=float(hit["elapsed_s"]) + overhead_s if hit is not None else None,
        step_at_target=int(hit["step"]) if hit is not None else None,
        val_at_target=_float(hit["val_loss"]) if hit is not None else None,
        final_val_loss=_float(evals[-1]["val_loss"]) if evals else None,
        steps=int(last["step"]),
        tokens=int(last["tokens"]),
    )


def summarize(
    runs: Sequence[TimeToLossRun], target: float, baseline: str = "baseline", fast: str = "fast"
) -> TimeToLossSummary:
    """Medians per config and the ratio fast / baseline of the median times to target.

    When the baseline never reached the target its median wall time stands in for its time (a lower bound),
    so the ratio is an upper bound (``ratio_is_upper_bound``). When the fast config never reached it there is
    no ratio.
    """
    names = list(dict.fromkeys(run.name for run in runs))
    median_time: dict[str, float | None] = {}
    median_wall: dict[str, float] = {}
    for name in names:
        mine = [run for run in runs if run.name == name]
        median_wall[name] = statistics.median(run.wall_s for run in mine)
        times = [run.time_to_target_s for run in mine]
        # A repeat that missed the target counts as slower than every one that hit it.
        ranked = sorted(times, key=lambda t: math.inf if t is None else t)
        median_time[name] = ranked[(len(ranked) - 1) // 2] if len(ranked) % 2 else _median_pair(ranked)
    ratios: dict[str, float | None] = {}
    for name in names:
        if name != baseline:
            mine, base = median_time[name], median_time.get(baseline)
            ratios[name] = mine / (base if base is not None else median_wall[baseline]) if mine is not None else None
    final_val = {}
    for name in names:
        losses = [run.final_val_loss for run in runs if run.name == name and run.final_val_loss is not None]
        final_val[name] = statistics.median(losses) if losses else None
    ratio, upper = None, False
    fast_time, base_time = median_time.get(fast), median_time.get(baseline)
    if fast_time is not None and baseline in median_wall:
        if base_time is None:
            base_time, upper = median_wall[baseline], True
        ratio = fast_time / base_time
    wall_ratio = median_wall[fast] / median_wall[baseline] if fast in median_wall and baseline in median_wall else None
    return TimeToLossSummary(
        target=target,
        runs=list(runs),
        median_time_to_target_s=median_time,
        median_wall_s=median_wall,
        ratio=ratio,
        ratio_is_upper_bound=upper,
        wall_ratio=wall_ratio,
        ratios=ratios,
        median_final_val_loss=final_val,
    )


def _median_pair(ranked: list[float | None]) -> float | None:
    lower, upper = ranked[len(ranked) // 2 - 1], ranked[len(ranked) // 2]
    if lower is None or upper is None:
        return None
    return (lower + upper) / 2


def run_time_to_loss(
    configs: Mapping[str, str | Path],
    data: str | Path,
    out_dir: str | Path,
    *,
    target: float = DEFAULT_TARGET,
    repeats: int = 1,
    overrides: Sequence[str] = (),
    threads: int | str | None = None,
    progress: bool = True,
) -> TimeToLossSummary:
    """Run every config ``repeats`` times, alternating, and summarise.

    Args:
        configs: label -> config file, e.g. ``{"baseline": ..., "fast": ...}`` (run in this order each round).
        data: the text file.
        out_dir: run directories go to ``out_dir/<label>-<repeat>``.
        target: the validation loss to reach.
        repeats: rounds.
        overrides: ``--set`` strings applied to every run (``--quick`` uses :data:`QUICK_OVERRIDES`).
        threads: every child's ``--threads`` (``LLM_LAB_THREADS``; a number also sets ``OMP_NUM_THREADS`` and
            ``MKL_NUM_THREADS``); ``None`` leaves the environment as it is.
        progress: print a line per finished run.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if threads is not None:
        threads = parse_threads(threads)
    data = Path(data)
    if not data.is_file():
        raise FileNotFoundError(f"--data {data} is not a file; give the text corpus (e.g. tiny_shakespeare.txt)")
    for label, path in configs.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"the {label} config {path} does not exist")
    env = dict(os.environ)
    if threads is not None:
        env[THREADS_ENV] = str(threads)
        if threads != "auto":
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    runs = []
    for repeat in range(repeats):
        for label, path in configs.items():
            run = run_training_process(
                path,
                data,
                Path(out_dir) / f"{label}-{repeat}",
                name=label,
                target=target,
                repeat=repeat,
                overrides=overrides,
                env=env,
            )
            runs.append(run)
            if progress:
                reached = f"{run.time_to_target_s:.1f} s" if run.time_to_target_s is not None else "not reached"
                print(
                    f"[{repeat + 1}/{repeats}] {label}: wall {run.wall_s:.1f} s, time to {target}: {reached}, "
                    f"final val loss {run.final_val_loss}",
                    file=sys.stderr,
                    flush=True,
                )
    names = list(configs)
    summary = summarize(runs, target, baseline=names[0], fast=names[1] if len(names) > 1 else names[0])
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    summary.environment = {"threads": threads, "cpu_count": os.cpu_count(), "load_average_at_end": load}
    return summary


def format_summary(summary: TimeToLossSummary) -> str:
    """The per-run table, then one line per config and the ratio."""
    rows = [{k: getattr(run, k) for k in RUN_COLUMNS} for run in summary.runs]
    lines = [markdown_table(rows, RUN_COLUMNS, digits=4), ""]
    for name, wall in summary.median_wall_s.items():
        t = summary.median_time_to_target_s[name]
        reached = f"{t:.1f} s" if t is not None else f"not reached (> {wall:.1f} s)"
        final = summary.median_final_val_loss.get(name)
        final_text = f"; final val loss {final:.4f}" if final is not None else ""
        lines.append(
            f"{name}: time to val loss {summary.target}: {reached}; process wall time {wall:.1f} s (median)"
            f"{final_text}"
        )
    if summary.ratio is not None:
        bound = "<= " if summary.ratio_is_upper_bound else ""
        lines.append(
            f"ratio (fast / baseline time to {summary.target}): {bound}{summary.ratio:.3f} "
            f"(speed-up {'>= ' if bound else ''}{1 / summary.ratio:.2f}x)"
        )
    else:
        lines.append(f"ratio: n/a (the fast config did not reach {summary.target})")
    names = list(summary.median_wall_s)
    for name in names[2:]:  # configs added with --add: each against the baseline
        r = summary.ratios.get(name)
        lines.append(f"ratio ({name} / {names[0]} time to {summary.target}): {'n/a' if r is None else f'{r:.3f}'}")
    if summary.wall_ratio is not None:
        lines.append(f"ratio of whole-process wall times: {summary.wall_ratio:.3f}")
    env = summary.environment
    if env:
        lines.append(
            f"threads per process: {env.get('threads') or 'default'}; cpus: {env.get('cpu_count')}; "
            f"load average at the end: {env.get('load_average_at_end')}"
        )
    return "\n".join(lines)


def write_time_to_loss_results(summary: TimeToLossSummary, out: str | Path) -> dict[str, Path]:
    """Write ``runs.csv`` (one row per run), ``summary.json`` and ``summary.md`` under ``out``; return their paths."""
    out = Path(out)
    paths = {"runs": out / "runs.csv", "summary": out / "summary.json", "markdown": out / "summary.md"}
    write_csv(paths["runs"], [asdict(run) for run in summary.runs])
    atomic_write_json(paths["summary"], summary.to_dict())
    atomic_write_text(paths["markdown"], "# Time to validation loss\n\n" + format_summary(summary) + "\n")
    return paths
