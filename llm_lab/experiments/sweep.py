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

This module runs a sweep in its folder; the plan and its ``sweep.json`` are in :mod:`llm_lab.experiments.sweep_plan`,
the time budget and the sizing of ``--jobs`` in :mod:`llm_lab.experiments.sweep_budget`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from llm_lab.core.train.checkpoint import RUN_FILE, run_checkpoint_path
from llm_lab.core.train.run import PreparedRun, prepare_run
from llm_lab.core.train.run_config import RunConfig
from llm_lab.core.train.trainer import NonFiniteLossError

# The plan and the budgets; their names also stay importable from here, where they were first defined.
from llm_lab.experiments.sweep_budget import (
    available_cores,
    available_memory,
    budget_steps,
    estimate_run_memory,
    measure_step_seconds,
    scale_schedule,
    size_jobs,
)
from llm_lab.experiments.sweep_plan import (
    MANIFEST,
    MAX_GRID_VALUES,
    MAX_RUNS,
    MAX_SEEDS,
    MAX_TIME_BUDGET_S,
    SWEEP_FORMAT_VERSION,
    RunSpec,
    Setting,
    SweepPlan,
    grid_settings,
    load_sweep_file,
    parse_grid_option,
    plan_from_manifest,
    read_manifest,
    seed_list,
)
from llm_lab.utils.dirlock import lock_directory
from llm_lab.utils.io import atomic_write_json, reporting_disk_full
from llm_lab.utils.json_input import load_json_file
from llm_lab.utils.signals import Stopped, deferred_stop, stop_requested
from llm_lab.utils.threads import apply_threads

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


# ---------------------------------------------------------------------------------------------- the folder
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
