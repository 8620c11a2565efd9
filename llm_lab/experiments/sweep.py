"""Ablation sweeps: every setting x seed trained as an ordinary run, resumable, then compared with statistics.

A sweep is a :class:`SweepPlan`: a base run config, the data, a list of :class:`Setting` (each a named list of
``section.key=value`` overrides: the points of a grid, named settings from a sweep file, or both crossed), the
seeds, and the budget: the config's steps, or a wall-time budget per run. Every combination is one run directory
``DIR/runs/<setting>-seed<N>/`` made by the normal training path (:func:`~llm_lab.core.train.run.prepare_run`
and the :class:`~llm_lab.core.train.Trainer`), so it can be sampled, packaged or plotted like any run.

The sweep folder::

    DIR/sweep.json        the plan (base config, data, settings, seeds, budget, calibrated steps)
    DIR/runs/NAME/        one ordinary run directory per setting x seed
    DIR/finished/NAME.json  written when a run has finished (its extra results; or that its loss diverged)
    DIR/logs/NAME.log     what the run printed
    DIR/report.md, results.csv, runs.csv, val_curves.png, val_loss.png   (see sweep_report)

Order of work, so that a mistake never damages an earlier sweep: (1) every combination's config is built and
validated, and one run per setting is prepared (data, tokenizer, model) without writing anything; (2) only then
is ``sweep.json`` written; (3) the runs go. A folder holding another sweep is refused unless ``extend`` is set,
which adds settings and seeds to it (a run already in it must stay the same).

Budgets: ``time_budget_s=None`` trains each run for the config's ``train.max_steps``. With a time budget the
schedule is scaled to it: one run per setting is timed (a few steps and one evaluation, on this machine, with
the job's thread share), the step count that fills the budget is computed, and warmup, decay, evaluation and
logging intervals are scaled by the same factor (:func:`scale_schedule`), so every run makes the same number of
evaluations and follows the same schedule shape. The calibrated steps are stored in ``sweep.json``, so a resumed
or extended sweep trains exactly the same runs.

Resume: a run with a checkpoint continues from it with the trainer's exact resume (the same batches, dropout
masks and losses as without the interruption); a run killed before its first checkpoint starts over; a finished
run is kept.

Parallel runs (``jobs > 1``) go to worker processes, each with ``threads // jobs`` torch threads (no more jobs
than cores) and no more jobs than memory allows (:func:`estimate_run_memory`). Ctrl+C stops them quietly: the
workers start with SIGINT blocked (so one landing while they import is held, not a traceback), take it only while
they train, and end their run as a kill would (its last checkpoint kept); the sweep then closes its pool and ends
with ``KeyboardInterrupt``, and a rerun resumes.

Hard days: the sweep folder is locked while the sweep runs and each run folder while its run trains
(:mod:`llm_lab.utils.dirlock`), so a second sweep into the same folder is refused with the holder's pid. SIGTERM
(preemption) is passed on to the running runs: each finishes its step, writes a checkpoint and stops; no new run
starts; the sweep stops with :class:`~llm_lab.utils.signals.Stopped` (exit 143), and the same command later
resumes every interrupted run exactly.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from llm_lab.core.model.memory import estimate_memory
from llm_lab.core.train.checkpoint import RUN_FILE, run_checkpoint_path
from llm_lab.core.train.run import PreparedRun, RunConfig, prepare_run
from llm_lab.core.train.trainer import NonFiniteLossError
from llm_lab.utils.config_loader import parse_override_value
from llm_lab.utils.dirlock import lock_directory
from llm_lab.utils.io import atomic_write_json, reporting_disk_full
from llm_lab.utils.json_input import load_json_file
from llm_lab.utils.seeds import check_seed
from llm_lab.utils.signals import Stopped, deferred_stop, stop_requested
from llm_lab.utils.threads import apply_threads
from llm_lab.utils.words import plural

__all__ = [
    "MAX_GRID_VALUES",
    "MAX_RUNS",
    "MAX_SEEDS",
    "MAX_TIME_BUDGET_S",
    "SWEEP_FORMAT_VERSION",
    "RunSpec",
    "Setting",
    "SweepPlan",
    "estimate_run_memory",
    "grid_settings",
    "load_sweep_file",
    "parse_grid_option",
    "plan_from_manifest",
    "read_manifest",
    "run_sweep",
    "scale_schedule",
    "seed_list",
    "size_jobs",
]

SWEEP_FORMAT_VERSION = 1
MANIFEST = "sweep.json"
_KIND = "llm-lab sweep"
# Keys a sweep owns: seeds come from the sweep's seed list, so a setting may not fix them.
_RESERVED_KEYS = ("train.seed",)
_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
# Bounds on what one value may ask of a sweep. Each run is a directory and a row of the report, so a sweep is
# bounded by what a report can show and a person can compare: 1000 seeds per setting is far past the few a
# confidence interval needs, 10,000 runs far past any grid worth reading. ``--seeds 1000000000`` built a list
# of a billion seeds (23 GiB) before anything ran.
MAX_SEEDS = 1000
MAX_RUNS = 10_000
#: The most values one grid axis may take: past 100, an axis is a curve to fit, not settings to compare side by
#: side (each value is a row of the report and a line or bar of its plots). ``--grid train.lr=`` with 5000 values
#: was accepted (5000 runs, under :data:`MAX_RUNS`) and ran for hours.
MAX_GRID_VALUES = 100
#: The longest wall-time budget per run: a week. ``--time-budget 1e12`` (31,700 years) calibrated 3.2e14 steps.
MAX_TIME_BUDGET_S = 7 * 24 * 3600.0


# ------------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Setting:
    """One configuration of the sweep: a name and the ``section.key=value`` overrides that make it.

    Attributes:
        name: shown in tables and plots, e.g. ``"norm=rmsnorm mlp=swiglu"`` or ``"baseline"``.
        overrides: applied to the base config in order (values as JSON text, e.g. ``model.n_layer=3``).
    """

    name: str
    overrides: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        """The name made safe for a directory name (``norm=rmsnorm mlp=swiglu`` -> ``norm_rmsnorm_mlp_swiglu``)."""
        return _SLUG_UNSAFE.sub("_", self.name.replace("=", "-")).strip("_") or "setting"


@dataclass(frozen=True)
class RunSpec:
    """One run of the sweep: a setting at a seed, its directory name and its full (validated) config."""

    setting: Setting
    seed: int
    config: RunConfig

    @property
    def name(self) -> str:
        return f"{self.setting.slug}-seed{self.seed}"


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """``model.norm`` -> ``norm`` where the last part is unique among the keys, else the full key."""
    last = [k.split(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def grid_settings(
    grid: Mapping[str, Sequence[Any]] | None = None, named: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Setting]:
    """The settings of a grid (every combination of its values), of named settings, or of both crossed.

    Args:
        grid: ``{"model.norm": ["layernorm", "rmsnorm"], ...}``; the first key varies slowest.
        named: ``{"baseline": {}, "muon+wsd": {"train.lr": 0.002}}``: settings that are not a grid.

    Raises:
        ValueError: an empty grid axis, a malformed key, no settings at all.
    """
    grid = dict(grid or {})
    named = dict(named or {"": {}})
    for key, values in grid.items():
        _check_key(key, "grid")
        if isinstance(values, str) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"grid {key}: give a non-empty list of values, got {values!r}")
        if len(values) > MAX_GRID_VALUES:
            raise ValueError(
                f"grid {key}: {len(values):,} values; one grid axis may have at most {MAX_GRID_VALUES} (each value is "
                "a row of the report); sample the range more coarsely"
            )
        if len(set(map(json.dumps, values))) != len(values):
            raise ValueError(f"grid {key}: each value may appear once, got {list(values)}")
    combinations = math.prod(len(values) for values in grid.values()) * len(named)
    if combinations > MAX_RUNS:
        raise ValueError(f"the grid makes {combinations:,} settings; a sweep may have at most {MAX_RUNS:,} runs")
    short = _short_keys(list(grid))
    settings = []
    for label, fixed in named.items():
        if not isinstance(fixed, Mapping):
            raise ValueError(f"setting {label!r}: expected an object of section.key: value, got {fixed!r}")
        for key in fixed:
            _check_key(key, f"setting {label!r}")
        base = [_override(k, v) for k, v in fixed.items()]
        for combo in itertools.product(*grid.values()):
            parts = [f"{short[k]}={_show(v)}" for k, v in zip(grid, combo, strict=True)]
            name = " ".join(([label] if label else []) + parts) or "base"
            overrides = base + [_override(k, v) for k, v in zip(grid, combo, strict=True)]
            settings.append(Setting(name, tuple(overrides)))
    return settings


def seed_list(first: int, count: int) -> list[int]:
    """``count`` consecutive seeds from ``first`` (``--seeds N``), refused above :data:`MAX_SEEDS` before any is
    made.

    Raises:
        ValueError: ``count`` below 1 or above :data:`MAX_SEEDS`.
    """
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_SEEDS:
        raise ValueError(f"--seeds must be at least 1 and at most {MAX_SEEDS} (seeds per setting), got {count!r}")
    check_seed(first + count - 1, f"the last seed (train.seed {first} + --seeds {count} - 1)")
    return [first + i for i in range(count)]


def _check_key(key: str, where: str) -> None:
    if not isinstance(key, str) or "." not in key or "=" in key:
        raise ValueError(f"{where}: {key!r} is not a section.key name (e.g. model.norm)")
    if key in _RESERVED_KEYS:
        raise ValueError(f"{where}: {key} is set by the sweep for each run; use --seeds instead")


def parse_grid_option(text: str) -> tuple[str, list[Any]]:
    """``"model.norm=layernorm,rmsnorm"`` -> ``("model.norm", ["layernorm", "rmsnorm"])`` (values parsed as JSON
    where they parse, so ``model.n_layer=2,3`` gives integers). Lists as values need a sweep file.

    Raises:
        ValueError: no ``=`` or no values.
    """
    if "=" not in text:
        raise ValueError(f"--grid {text!r}: expected section.key=value1,value2 (e.g. model.norm=layernorm,rmsnorm)")
    key, raw = text.split("=", 1)
    values = [parse_override_value(v.strip()) for v in raw.split(",") if v.strip()]
    if not values:
        raise ValueError(f"--grid {text!r}: no values after '='")
    _check_key(key, f"--grid {text!r}")
    return key, values


@dataclass
class SweepPlan:
    """What a sweep runs.

    Attributes:
        base: the run config every run starts from (shared ``--set`` values already applied).
        data: the corpus (a text file or a prepared directory), the same for every run.
        settings: the configurations compared, in order.
        seeds: every setting runs once per seed (``train.seed``).
        time_budget_s: ``None``: equal steps (the config's); a number: equal wall time per run, in seconds.
        baseline: the setting the report compares the others against (default: the first).
    """

    base: RunConfig
    data: Path
    settings: Sequence[Setting]
    seeds: Sequence[int]
    time_budget_s: float | None = None
    baseline: str | None = None

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.settings = tuple(self.settings)
        self.seeds = tuple(self.seeds)
        if not self.settings:
            raise ValueError("the sweep has no settings; give --grid section.key=v1,v2 or a sweep file")
        if not self.seeds:
            raise ValueError("the sweep needs at least one seed (--seeds N with N >= 1)")
        for seed in self.seeds:
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise ValueError(f"seeds must be non-negative integers, got {seed!r}")
        if len(self.seeds) > MAX_SEEDS:
            raise ValueError(f"a sweep may have at most {MAX_SEEDS} seeds per setting, got {len(self.seeds):,}")
        if len(self.settings) * len(self.seeds) > MAX_RUNS:
            raise ValueError(
                f"{len(self.settings):,} settings x {len(self.seeds):,} seeds make "
                f"{len(self.settings) * len(self.seeds):,} runs; a sweep may have at most {MAX_RUNS:,}"
            )
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"each seed may appear once, got {list(self.seeds)}")
        names = [s.name for s in self.settings]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two settings are both named {name!r}; name them apart")
        slugs = [s.slug for s in self.settings]
        for setting in self.settings:
            if slugs.count(setting.slug) > 1:
                raise ValueError(f"settings {[s.name for s in self.settings if s.slug == setting.slug]} would share "
                                 f"the directory name {setting.slug!r}; rename one")  # fmt: skip
        if self.baseline is None:
            self.baseline = self.settings[0].name
        elif self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not a setting of this sweep; choose from: {names}")
        if self.time_budget_s is not None and not (
            isinstance(self.time_budget_s, int | float) and math.isfinite(self.time_budget_s) and self.time_budget_s > 0
        ):
            raise ValueError(f"--time-budget must be a positive number of seconds, got {self.time_budget_s!r}")
        if self.time_budget_s is not None and self.time_budget_s > MAX_TIME_BUDGET_S:
            raise ValueError(
                f"--time-budget {self.time_budget_s:g}s is more than a week per run; the most is "
                f"{MAX_TIME_BUDGET_S:g}s (for longer runs, train them with llm-lab train)"
            )
        if not self.data.exists():
            raise FileNotFoundError(f"--data {self.data} does not exist (give a text file or a prepared directory)")

    def runs(self) -> list[RunSpec]:
        """Every setting x seed with its validated config (settings in order, seeds inside).

        Raises:
            ValueError: one line naming the setting and the fault (unknown key, wrong type, invalid config).
        """
        specs = []
        for setting in self.settings:
            for seed in self.seeds:
                try:
                    config = self.base.with_overrides([*setting.overrides, f"train.seed={seed}"])
                except ValueError as e:
                    raise ValueError(f"setting {setting.name!r}: {e}") from None
                specs.append(RunSpec(setting, seed, config))
        return specs

    def to_manifest(self) -> dict[str, Any]:
        return {
            "kind": _KIND,
            "format_version": SWEEP_FORMAT_VERSION,
            "base": self.base.to_dict(),
            "data": str(self.data.resolve()),
            "time_budget_s": self.time_budget_s,
            "settings": [{"name": s.name, "overrides": list(s.overrides)} for s in self.settings],
            "seeds": list(self.seeds),
            "baseline": self.baseline,
        }


def load_sweep_file(path: str | Path) -> dict[str, Any]:
    """Read a sweep file: named settings and/or a grid, shared values, seeds, budget and baseline.

    Format (every key optional; ``settings`` or ``grid`` needed)::

        {"settings": {"baseline": {}, "muon+wsd": {"train.lr": 0.002, "train.warmup_steps": 50}},
         "grid": {"model.n_layer": [3, 4]},
         "set": {"train.max_steps": 300},
         "seeds": 3, "baseline": "baseline", "time_budget_s": 60}

    Returns:
        The checked dict (keys ``settings``, ``grid``, ``set``, ``seeds``, ``baseline``, ``time_budget_s``).

    Raises:
        ValueError: not strict JSON, an unknown key, a value of the wrong kind.
    """
    data = load_json_file(path)
    allowed = ("settings", "grid", "set", "seeds", "baseline", "time_budget_s")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with keys {', '.join(allowed)}")
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(allowed)}")
    for key in ("settings", "grid", "set"):
        if key in data and not isinstance(data[key], dict):
            raise ValueError(f"{path}: {key!r} must be an object, got {data[key]!r}")
    if "seeds" in data and (not isinstance(data["seeds"], int) or isinstance(data["seeds"], bool)):
        raise ValueError(f"{path}: 'seeds' must be a number of seeds, got {data['seeds']!r}")
    for key in data.get("set", {}):
        _check_key(key, f"{path}: set")
    return data


# ------------------------------------------------------------------------------------------------- budgets
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


# ---------------------------------------------------------------------------------------------- the folder
def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """``DIR/sweep.json``, checked to be a sweep's.

    Raises:
        ValueError: no sweep there, or a file that is not one.
    """
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{out_dir} holds no sweep (no {MANIFEST}); run `llm-lab sweep --out {out_dir}` first")
    data = load_json_file(path)
    if not isinstance(data, dict) or data.get("kind") != _KIND:
        raise ValueError(f"{path} is not an llm-lab sweep file")
    if data.get("format_version") != SWEEP_FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {data.get('format_version')!r} is from another version of llm-lab")
    settings, seeds = data.get("settings"), data.get("seeds")
    if (
        not isinstance(data.get("base"), dict)
        or not isinstance(data.get("data"), str)
        or not isinstance(settings, list)
        or not all(isinstance(x, dict) and isinstance(x.get("name"), str) and isinstance(x.get("overrides"), list)
                   for x in settings)  # fmt: skip
        or not isinstance(seeds, list)
        or not all(isinstance(x, int) for x in seeds)
        or not isinstance(data.get("steps", {}), dict)
    ):
        raise ValueError(f"{path} is damaged (base, data, settings, seeds or steps missing or of the wrong kind)")
    return data


def plan_from_manifest(manifest: dict[str, Any], *, check_data: bool = True) -> SweepPlan:
    """The :class:`SweepPlan` a manifest describes."""
    settings = [Setting(s["name"], tuple(s["overrides"])) for s in manifest["settings"]]
    plan = SweepPlan.__new__(SweepPlan)  # __post_init__ checks the data exists; a report does not need it
    plan.base = RunConfig.from_dict(manifest["base"], where=MANIFEST)
    plan.data, plan.settings, plan.seeds = Path(manifest["data"]), tuple(settings), tuple(manifest["seeds"])
    plan.time_budget_s, plan.baseline = manifest.get("time_budget_s"), manifest.get("baseline")
    if check_data:
        plan.__post_init__()
    return plan


def _merge_plans(old: dict[str, Any], new: dict[str, Any], out_dir: Path, extend: bool) -> dict[str, Any]:
    """The manifest to use when ``out_dir`` already holds the sweep ``old`` and ``new`` is asked for.

    The same plan continues it; with ``extend`` new settings and seeds are added; anything else is refused.
    """
    identity = ("base", "data", "time_budget_s")
    same = all(old.get(k) == new[k] for k in (*identity, "settings", "seeds"))
    if same:
        return old | {"baseline": new["baseline"]}
    if not extend:
        differs = [k for k in (*identity, "settings", "seeds") if old.get(k) != new[k]]
        raise ValueError(
            f"{out_dir} holds another sweep (its {', '.join(differs)} differ{'s' if len(differs) == 1 else ''}); "
            "pass --extend to add these settings and seeds to it, or choose another --out"
        )
    for key in identity:
        if old.get(key) != new[key]:
            raise ValueError(
                f"cannot extend the sweep in {out_dir}: its {key} differs; extending adds settings and seeds only"
            )
    settings = list(old["settings"])
    by_name = {s["name"]: s for s in settings}
    for setting in new["settings"]:
        if setting["name"] in by_name:
            if by_name[setting["name"]]["overrides"] != setting["overrides"]:
                raise ValueError(
                    f"cannot extend the sweep in {out_dir}: setting {setting['name']!r} is already there with other "
                    "values; give the new one another name"
                )
        else:
            settings.append(setting)
    seeds = list(old["seeds"]) + [s for s in new["seeds"] if s not in old["seeds"]]
    return old | {"settings": settings, "seeds": seeds, "baseline": new["baseline"]}


def _open_folder(plan: SweepPlan, out_dir: Path, extend: bool) -> tuple[dict[str, Any], SweepPlan]:
    """Check ``out_dir`` and return the manifest and plan to run (nothing written)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a directory")
    new = plan.to_manifest()
    if (out_dir / MANIFEST).is_file():
        old = read_manifest(out_dir)
        merged = _merge_plans(old, new, out_dir, extend)
        return merged, plan_from_manifest(merged)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ValueError(
            f"--out {out_dir} is not empty and holds no sweep ({MANIFEST}); choose a new or empty directory"
        )
    return new | {"steps": {}}, plan


def _finished_path(out_dir: Path, name: str) -> Path:
    return out_dir / "finished" / f"{name}.json"


def run_status(out_dir: str | Path, name: str) -> str:
    """``finished``, ``interrupted`` (a run directory without a finished record) or ``pending``."""
    out_dir = Path(out_dir)
    if _finished_path(out_dir, name).is_file():
        return "finished"
    return "interrupted" if (out_dir / "runs" / name).exists() else "pending"


# ------------------------------------------------------------------------------------------------ the runs
RunEvaluator = Callable[[Any, PreparedRun], dict[str, Any]]
"""``evaluate(trainer, prepared) -> extra results``: called after a run trains (top-level, so workers can run it)."""


@dataclass(frozen=True)
class _Task:
    """What a worker needs to train one run (plain data, so it crosses process boundaries)."""

    name: str
    config: dict[str, Any]
    data: str
    out_dir: str
    threads: int | None
    evaluate: RunEvaluator | None


def _clear_unstarted(run_dir: Path) -> None:
    """Remove a run directory that a kill left before it had a run.json (only the tokenizer the start writes)."""
    if run_dir.is_dir() and not (run_dir / RUN_FILE).exists():
        if {p.name for p in run_dir.iterdir()} - {"tokenizer"}:
            raise ValueError(f"{run_dir} holds files that no llm-lab run wrote; move them away and rerun the sweep")
        shutil.rmtree(run_dir)


def _train_one(task: _Task) -> str:
    """Train (or resume, or finish) one run of the sweep and write its finished record; returns its name."""
    if task.threads is not None:
        apply_threads(task.threads)  # the job's share; the runs' threads="auto" keeps it
    out_dir = Path(task.out_dir)
    run_dir = out_dir / "runs" / task.name
    config = RunConfig.from_dict(task.config, where=f"{MANIFEST}: run {task.name}")
    with lock_directory(run_dir):
        _train_locked(task, out_dir, run_dir, config)
    return task.name


def _train_locked(task: _Task, out_dir: Path, run_dir: Path, config: RunConfig) -> None:
    _clear_unstarted(run_dir)
    resume = run_checkpoint_path(run_dir, "last").is_file()
    # A run killed before its first checkpoint has nothing to continue from: it starts over, in its own folder.
    overwrite = not resume and (run_dir / RUN_FILE).is_file()
    log = out_dir / "logs" / f"{task.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        print(f"=== {'resuming' if resume else 'starting'} {task.name} ===", flush=True)
        prepared = prepare_run(config, task.data, run_dir, resume=resume, overwrite=overwrite)
        trainer = prepared.start(progress=False)
        record: dict[str, Any] = {"run": task.name, "extra": {}}
        try:
            trainer.train()
        except NonFiniteLossError as e:
            # A setting that diverges is a result, not a failure of the sweep: recorded, and the sweep goes on.
            print(f"diverged: {e}", flush=True)
            record["diverged"] = str(e)
        except Stopped as e:
            print(e, flush=True)  # the run's log says where it stopped; the sweep resumes it
            raise
        else:
            record["extra"] = task.evaluate(trainer, prepared) if task.evaluate is not None else {}
    atomic_write_json(_finished_path(out_dir, task.name), record)


_CAN_BLOCK = hasattr(signal, "pthread_sigmask")


def _train_in_worker(task: _Task) -> str | None:
    """:func:`_train_one` in a pool worker, which holds SIGINT blocked (:func:`_spawning_with_sigint_blocked`)
    except here; ``None`` when Ctrl+C ended the run (its last checkpoint stays: a rerun resumes it)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if _CAN_BLOCK:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # one that came while starting lands here
        return _train_one(task)
    except KeyboardInterrupt:
        return None
    finally:
        if _CAN_BLOCK:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


@contextlib.contextmanager
def _spawning_with_sigint_blocked():
    """Start pool workers (``submit`` spawns them) with SIGINT blocked, a mask a spawned interpreter inherits: a
    Ctrl+C while a worker imports torch waits for its run instead of a traceback. A signal mask is per thread and a
    Ctrl+C may land on any thread of this process, so for the few milliseconds of the spawn SIGINT is also only
    recorded here, and raised as ``KeyboardInterrupt`` once the spawn is complete (never halfway through writing a
    worker's start-up data). A no-op off the main thread or without masks."""
    if not _CAN_BLOCK or threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def _run_in_pool(tasks: list[_Task], jobs: int, bar: tqdm, show: Callable[[int], None]) -> None:
    """Run ``tasks`` on ``jobs`` worker processes; on Ctrl+C (here or in a worker) stop every run, close the pool
    cleanly (no leaked semaphores) and raise ``KeyboardInterrupt``."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    queue = list(tasks)
    interrupted = False
    workers: set[int] = set()  # the pids this pool spawned, to pass a Ctrl+C on to
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        running: set[concurrent.futures.Future[str | None]] = set()
        try:
            while queue or running:
                while queue and len(running) < jobs and stop_requested() is None:
                    before = {child.pid for child in multiprocessing.active_children()}
                    try:
                        with _spawning_with_sigint_blocked():
                            running.add(pool.submit(_train_in_worker, queue.pop(0)))
                    finally:  # also when the Ctrl+C came during the spawn: the new worker is passed it too
                        workers |= {child.pid for child in multiprocessing.active_children()} - before
                if not running:
                    break  # stopped (SIGTERM) with runs left to start: a rerun starts them
                show(len(running))
                finished, running = concurrent.futures.wait(running, return_when="FIRST_COMPLETED")
                for future in finished:
                    try:
                        result = future.result()  # a failed run stops the sweep; finished ones stay
                    except BaseException:
                        if stop_requested() is None:
                            raise
                        continue  # stopped, or killed before it could checkpoint: resumed next time
                    if result is None:  # the run ended on Ctrl+C or on the SIGTERM passed on to it
                        if stop_requested() is not None:
                            continue
                        raise KeyboardInterrupt
                    bar.update(1)
        except KeyboardInterrupt:
            interrupted = True
            for child in multiprocessing.active_children():  # a Ctrl+C that reached this process only
                if child.pid in workers:
                    with contextlib.suppress(OSError):
                        os.kill(child.pid, signal.SIGINT)
            concurrent.futures.wait(running)  # each ends its run at the next step
    if interrupted:
        raise KeyboardInterrupt


@dataclass
class SweepResult:
    """What :func:`run_sweep` did: the plan it ran, every run, the jobs used and notes (e.g. jobs lowered)."""

    plan: SweepPlan
    runs: list[RunSpec]
    out_dir: Path
    jobs: int
    steps: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _precheck(plan: SweepPlan, specs: list[RunSpec], out_dir: Path, manifest: dict[str, Any], threads: int | None,
              progress: bool) -> tuple[list[RunSpec], int]:  # fmt: skip
    """Prepare one run per setting (writing nothing): data, tokenizer and model checked for every setting, and the
    time budget calibrated for the settings without a step count yet. Returns the runs (with their final configs)
    and the largest memory estimate."""
    import torch

    steps: dict[str, int] = manifest.setdefault("steps", {})
    probe_dir = out_dir / ".sweep-check-never-written"
    largest = 0
    first: dict[str, RunSpec] = {}
    for spec in specs:
        first.setdefault(spec.setting.name, spec)
    to_time: dict[str, PreparedRun] = {}
    previous_threads = torch.get_num_threads()
    if threads is not None:
        apply_threads(threads)  # the runs' threads="auto" keeps it
    try:
        for name, spec in tqdm(first.items(), desc="sweep: checking settings", unit="setting", disable=not progress,
                               leave=False, total=len(first)):  # fmt: skip
            try:
                prepared = prepare_run(spec.config, plan.data, probe_dir)
            except ValueError as e:
                raise ValueError(f"setting {name!r}: {e}") from None
            largest = max(largest, estimate_run_memory(prepared))
            if plan.time_budget_s is not None and name not in steps:
                to_time[name] = prepared
            del prepared
        if to_time:
            if progress:
                tqdm.write(f"sweep: timing {len(to_time)} setting(s) to fit the {plan.time_budget_s:g}s budget",
                           file=sys.stderr)  # fmt: skip
            speeds = measure_step_seconds(list(to_time.values()))
            for (name, _), (step_s, eval_s) in zip(to_time.items(), speeds, strict=True):
                # The scaled schedule makes as many evaluations as the base one.
                budget = float(plan.time_budget_s)
                steps[name] = budget_steps(first[name].config.train, budget, step_s, eval_s)
    finally:
        torch.set_num_threads(previous_threads)
    if plan.time_budget_s is not None:
        specs = [
            dataclasses.replace(s, config=dataclasses.replace(
                s.config, train=scale_schedule(s.config.train, steps[s.setting.name])))
            for s in specs
        ]  # fmt: skip
    return specs, largest


def run_sweep(
    plan: SweepPlan,
    out_dir: str | Path,
    *,
    jobs: int = 1,
    threads: int | None = None,
    extend: bool = False,
    progress: bool = True,
    evaluate: RunEvaluator | None = None,
) -> SweepResult:
    """Check everything, write the plan, then train every run not finished yet (resuming interrupted ones).

    Args:
        plan: what to run.
        out_dir: the sweep folder (new, empty, or holding this same sweep, or one to extend).
        jobs: runs at a time (lowered to the cores and to what memory allows, with a note).
        threads: torch threads in all (default: every core this process may use); each job gets
            ``threads // jobs``.
        extend: allow adding settings and seeds to the sweep already in ``out_dir``.
        progress: one bar for the sweep (runs done, running, left; estimated time remaining).
        evaluate: optional ``evaluate(trainer, prepared) -> dict`` after each run (its results are stored with
            the finished record; used by the positional-encoding preset).

    Raises:
        ValueError: one line naming the fault, before anything is written (see the module docstring).
        DirectoryLockedError: another process is writing ``out_dir``.
        Stopped: SIGTERM arrived; the running runs saved a checkpoint and the sweep can be resumed.
    """
    with lock_directory(Path(out_dir)), reporting_disk_full(out_dir):  # logs and records fill a disk too
        return _run_sweep_locked(plan, Path(out_dir), jobs, threads, extend, progress, evaluate)


def _pass_on(signum: int) -> None:
    """Send a stop signal on to the sweep's worker processes (each then checkpoints its run and stops)."""
    for child in multiprocessing.active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)


def _run_sweep_locked(plan: SweepPlan, out_dir: Path, jobs: int, threads: int | None, extend: bool, progress: bool,
                      evaluate: RunEvaluator | None) -> SweepResult:  # fmt: skip
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs!r}")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    manifest, plan = _open_folder(plan, out_dir, extend)
    specs = plan.runs()  # every combination's config validated before anything runs
    cores = threads if threads is not None else available_cores()
    jobs, job_threads, notes = size_jobs(jobs, cores, explicit_threads=threads is not None)
    specs, largest = _precheck(plan, specs, out_dir, manifest, job_threads, progress)
    jobs, job_threads, more = size_jobs(jobs, cores, explicit_threads=threads is not None, run_bytes=largest,
                                        available_bytes=available_memory())  # fmt: skip
    notes += more
    for note in notes:
        warnings.warn(note, RuntimeWarning, stacklevel=2)

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / MANIFEST, manifest)
    data = str(plan.data.resolve())
    tasks = [
        _Task(s.name, s.config.to_dict(), data, str(out_dir), job_threads, evaluate)
        for s in specs
        if run_status(out_dir, s.name) != "finished"
    ]
    done = len(specs) - len(tasks)
    bar = tqdm(total=len(specs), initial=done, desc="sweep", unit="run", disable=not progress, dynamic_ncols=True,
               file=sys.stderr)  # fmt: skip

    def show(running: int) -> None:
        bar.set_postfix_str(f"done {bar.n}, running {running}, left {len(specs) - bar.n - running}", refresh=False)
        bar.refresh()

    try:
        with deferred_stop(on_request=_pass_on):  # SIGTERM: the running runs checkpoint and stop, no new one starts
            if jobs == 1:
                for task in tasks:
                    if stop_requested() is not None:
                        break
                    show(1)
                    _train_one(task)
                    bar.update(1)
                show(0)
            else:
                _run_in_pool(tasks, jobs, bar, show)
                show(0)
            signum = stop_requested()
    except Stopped as e:
        signum = e.signum
    finally:
        bar.close()
    if signum is not None:
        raise Stopped(
            f"sweep stopped by {signal.Signals(signum).name}: {bar.n} of {len(specs)} runs finished, the running "
            f"ones saved a checkpoint; run the same command again to continue (sweep folder {out_dir})",
            signum,
        )
    return SweepResult(plan=plan, runs=specs, out_dir=out_dir, jobs=jobs, steps=dict(manifest.get("steps", {})),
                       notes=notes)  # fmt: skip


def sweep_runs(out_dir: str | Path) -> tuple[SweepPlan, list[RunSpec]]:
    """The plan and runs of the sweep in ``out_dir`` (with the calibrated steps of a time budget), from its
    ``sweep.json``; for the report."""
    manifest = read_manifest(out_dir)
    plan = plan_from_manifest(manifest, check_data=False)
    specs = plan.runs()
    steps = manifest.get("steps") or {}
    if plan.time_budget_s is not None:
        specs = [
            dataclasses.replace(s, config=dataclasses.replace(s.config, train=scale_schedule(s.config.train,
                                                                                            steps[s.setting.name])))
            if s.setting.name in steps else s
            for s in specs
        ]  # fmt: skip
    return plan, specs


def finished_record(out_dir: str | Path, name: str) -> dict[str, Any] | None:
    """What a finished run recorded (``extra`` results; ``diverged``: the error of a run whose loss became NaN or
    infinite), or ``None`` when it has not finished."""
    path = _finished_path(Path(out_dir), name)
    if not path.is_file():
        return None
    record = load_json_file(path)
    if not isinstance(record, dict) or not isinstance(record.get("extra", {}), dict):
        raise ValueError(f"{path}: not a finished-run record of an llm-lab sweep")
    return {"extra": dict(record.get("extra") or {}), "diverged": record.get("diverged")}
