"""``make gpu-check``: prove the CUDA paths and measure them in one go, within a fixed time budget.

A GPU is lent to this project now and then for a few minutes, so the whole proof is prepared in advance and runs
as one command (``scripts/gpu_check.py``). Its stages, each in a process of its own:

============  =====  ==============================================================================================
stage         share  what it runs
============  =====  ==============================================================================================
env           4%     GPU name and count, torch, CUDA and cuDNN versions, the measured matmul peak (8192-wide
                     products in bf16, fp16 and fp32), the denominator of every MFU in the report
tests         34%    ``pytest -m device --devices cuda``: the CUDA legs of the device tests (model, HF parity,
                     packages, trainer precisions/resume/grad scaler/compile, generate, server, DDP with nccl)
step          18%    :mod:`~llm_lab.experiments.step_bench` on the 10M model, batch 64: AdamW and Muon, fp32/bf16
                     eager and bf16 compiled, against the plain baseline
gpt2_step     18%    the same benchmark on ``configs/gpt2_small.json`` (GPT-2 small, 124M, context 1024, vocab
                     50,257) at its batch size: bf16, compiled, AdamW; tokens/s and MFU against the measured bf16
                     peak (llm.c reaches about 45% on an H100 for this model)
generate      11%    :mod:`~llm_lab.experiments.generate_bench`: KV-cached ``generate`` vs HF ``generate`` on the GPU
time_to_loss  15%    :mod:`~llm_lab.experiments.time_to_loss`: the baseline, fast and 60 s configs as whole
                     ``llm-lab train`` processes on the GPU (the real recipes on ``--data``; without it, quick mode on
                     self-made text)
============  =====  ==============================================================================================

The budget (default :data:`DEFAULT_BUDGET_S`, 7.5 minutes: the check must end within 8, and a stage ended for its
time may take :data:`KILL_GRACE_S` more to stop) is shared out by those shares; time a stage does not use passes on
to the next. A stage still running when its time is up is ended (its whole process group) and reported "over
budget"; when less than :data:`MIN_STAGE_S` is left, the remaining stages are reported "skipped". The report
(``report.md``, ``report.json``) is written from whatever the stages left behind, so an ended stage costs its own
numbers only (the step stage writes its eager numbers before it starts compiling).

On a machine without CUDA the check says so in one line and runs nothing.

This module plans the stages and runs them within the budget; each stage's own measurement is in
:mod:`llm_lab.experiments.gpu_check_stages`, the report in :mod:`llm_lab.experiments.gpu_check_report`.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# run_stage, write_report, read_test_results and the result file names stay importable from here.
from llm_lab.experiments.gpu_check_report import read_test_results, write_report
from llm_lab.experiments.gpu_check_stages import ENV_FILE, TESTS_FILE, run_stage

__all__ = [
    "DEFAULT_BUDGET_S",
    "ENV_FILE",
    "GpuCheckSettings",
    "Stage",
    "StageOutcome",
    "build_stages",
    "format_plan",
    "read_test_results",
    "run_gpu_check",
    "run_process",
    "run_stage",
    "run_stages",
    "stage_allowances",
    "write_report",
]

DEFAULT_BUDGET_S = 450.0
# Below this a stage could not even import torch and start: it is skipped instead of started and killed.
MIN_STAGE_S = 15.0
# After SIGINT a stage gets this long to exit before SIGKILL: pytest then still writes the JUnit file of the tests
# that ran, and torchrun stops its workers.
KILL_GRACE_S = 10.0
NO_CUDA_MESSAGE = "gpu-check: CUDA is not available on this machine; nothing to run."


@dataclass
class GpuCheckSettings:
    """What ``make gpu-check`` runs.

    Attributes:
        out_dir: where the logs, the stages' results and ``report.md`` go.
        budget_s: the time all stages together may take (seconds).
        data: a text corpus for the time-to-loss stage (tiny Shakespeare for real numbers); ``None`` runs its
            quick mode on self-made text.
        repo_root: the repository (the device tests and the time-to-loss configs are read from it).

    The benchmarks run on ``cuda`` (the current GPU); ``cuda:N`` placement is one of the device tests.
    """

    out_dir: Path = Path("experiments") / "gpu_check"
    budget_s: float = DEFAULT_BUDGET_S
    data: Path | None = None
    repo_root: Path = Path(".")

    def __post_init__(self) -> None:
        self.out_dir, self.repo_root = Path(self.out_dir), Path(self.repo_root)
        self.data = Path(self.data) if self.data is not None else None
        if not isinstance(self.budget_s, int | float) or not MIN_STAGE_S <= self.budget_s < math.inf:
            raise ValueError(f"budget_s must be a number of seconds from {MIN_STAGE_S:.0f} on, got {self.budget_s!r}")
        if self.data is not None and not self.data.is_file():
            raise FileNotFoundError(f"--data {self.data} is not a file; give a text corpus or leave it out")


@dataclass(frozen=True)
class Stage:
    """One step of the check: a command run in its own process group, with a share of the budget."""

    name: str
    share: float
    description: str
    command: tuple[str, ...]


@dataclass
class StageOutcome:
    """How a stage ended: ``ok``, ``failed`` (non-zero exit), ``over budget`` (ended at its time) or ``skipped``."""

    name: str
    status: str
    allowed_s: float
    used_s: float
    returncode: int | None = None
    log: str | None = None


# ------------------------------------------------------------------------------------------------ the plan


def _worker(name: str, out_dir: Path, **kwargs: Any) -> tuple[str, ...]:
    """The command that runs :func:`run_stage` for one stage in a fresh Python process."""
    arguments = ", ".join([repr(name), repr(str(out_dir))] + [f"{k}={v!r}" for k, v in kwargs.items()])
    code = f"from llm_lab.experiments.gpu_check_stages import run_stage; run_stage({arguments})"
    return (sys.executable, "-c", code)


def build_stages(settings: GpuCheckSettings) -> list[Stage]:
    """The stages of the check, in order, with their shares of the budget (see the module table)."""
    out = settings.out_dir.resolve()
    device = "cuda"
    # A test module that cannot be imported here (an optional package missing) must not stop the device tests.
    tests = (
        sys.executable, "-m", "pytest", "-m", "device", "--devices", "cuda", "-q", "-p", "no:cacheprovider",
        "--continue-on-collection-errors", f"--junitxml={out / TESTS_FILE}", str(settings.repo_root / "tests"),
    )  # fmt: skip
    data = str(settings.data.resolve()) if settings.data is not None else None
    ttl_mode = "the real configs on " + settings.data.name if settings.data is not None else "quick, self-made text"
    return [
        Stage("env", 0.04, "GPU, torch/CUDA versions, measured matmul peaks", _worker("env", out, device=device)),
        Stage("tests", 0.34, "pytest -m device --devices cuda (DDP with nccl included)", tests),
        Stage("step", 0.18, "training step, 10M model: AdamW/Muon, fp32/bf16, eager/compiled",
              _worker("step", out, device=device)),
        Stage("gpt2_step", 0.18, "training step, GPT-2 small 124M (configs/gpt2_small.json): bf16 compiled, MFU",
              _worker("gpt2_step", out, device=device, repo_root=str(settings.repo_root.resolve()))),
        Stage("generate", 0.11, "generate vs HF generate", _worker("generate", out, device=device)),
        Stage(
            "time_to_loss",
            0.15,
            f"baseline vs fast and 60 s configs, whole train processes ({ttl_mode})",
            _worker("time_to_loss", out, device=device, data=data, repo_root=str(settings.repo_root.resolve())),
        ),
    ]


def stage_allowances(stages: Sequence[Stage], budget_s: float) -> dict[str, float]:
    """Each stage's own share of the budget in seconds (before time passed on from earlier stages)."""
    total = sum(stage.share for stage in stages)
    if total <= 0:
        raise ValueError("the stages' shares must add up to more than zero")
    return {stage.name: budget_s * stage.share / total for stage in stages}


def format_plan(stages: Sequence[Stage], budget_s: float) -> str:
    """What will run and for how long at most: printed before anything starts."""
    allowed = stage_allowances(stages, budget_s)
    lines = [f"gpu-check: {len(stages)} stages within {budget_s:.0f} s ({budget_s / 60:.1f} min); "
             "time a stage leaves unused passes to the next, a stage over its time is ended"]  # fmt: skip
    width = max(len(stage.name) for stage in stages)
    for i, stage in enumerate(stages, 1):
        lines.append(f"  {i}. {stage.name:<{width}}  up to {allowed[stage.name]:5.0f} s  {stage.description}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- running it

Launcher = Callable[[Sequence[str], float, Path], int | None]


def run_process(command: Sequence[str], timeout_s: float, log_path: Path, cwd: Path | None = None) -> int | None:
    """Run ``command`` with its output in ``log_path``; end its whole process group after ``timeout_s``.

    Returns:
        The exit status, or ``None`` when it was ended for running over its time.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
                                   preexec_fn=_sigint_answered if os.name == "posix" else None)  # fmt: skip
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _end_group(process)
            return None


def _sigint_answered() -> None:
    """In the stage's process, before it runs: SIGINT back to its default and unblocked. A check started in the
    background of a script (``nohup llm-lab gpu-check ... &``) inherits SIGINT ignored, and a stage that ignored it
    could not be ended gently (:func:`_end_group`) and would lose its test results to SIGKILL."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _end_group(process: subprocess.Popen) -> None:
    """SIGINT to the stage's process group (pytest, torchrun and their children), SIGKILL if it lingers.

    SIGINT rather than SIGTERM: Python turns it into ``KeyboardInterrupt``, on which pytest still reports the
    tests that finished (and writes them to its JUnit file), so a tests stage over its time keeps its results.
    """
    for sig, wait_s in ((signal.SIGINT, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue


def run_stages(
    stages: Sequence[Stage],
    budget_s: float,
    log_dir: Path,
    *,
    launcher: Launcher,
    clock: Callable[[], float] = time.monotonic,
    announce: Callable[[str], None] = print,
) -> list[StageOutcome]:
    """Run the stages in order within ``budget_s`` seconds in all.

    A stage may run for its own share plus whatever earlier stages left unused, and never past the end of the
    whole budget. ``launcher(command, timeout_s, log_path)`` runs one stage and returns its exit status, or
    ``None`` when it ended the stage for its time (:func:`run_process`; tests pass a fake one and a fake clock).
    """
    allowances = stage_allowances(stages, budget_s)
    start = clock()
    banked = 0.0
    outcomes = []
    for i, stage in enumerate(stages, 1):
        remaining = budget_s - (clock() - start)
        allowed = min(allowances[stage.name] + banked, remaining)
        if allowed < MIN_STAGE_S:
            outcomes.append(StageOutcome(stage.name, "skipped", max(allowed, 0.0), 0.0))
            announce(f"[{i}/{len(stages)}] {stage.name}: skipped, {max(remaining, 0.0):.0f} s of the budget left")
            continue
        log = log_dir / f"{stage.name}.log"
        announce(f"[{i}/{len(stages)}] {stage.name}: up to {allowed:.0f} s (log: {log})")
        began = clock()
        returncode = launcher(stage.command, allowed, log)
        used = clock() - began
        banked = max(0.0, allowed - used)
        status = "over budget" if returncode is None else "ok" if returncode == 0 else "failed"
        outcomes.append(StageOutcome(stage.name, status, allowed, used, returncode, str(log)))
        announce(f"[{i}/{len(stages)}] {stage.name}: {status} after {used:.0f} s")
    return outcomes


def run_gpu_check(settings: GpuCheckSettings, *, launcher: Launcher | None = None) -> int:
    """The whole check: plan, stages, report. Returns the exit status of ``scripts/gpu_check.py``.

    Returns:
        0 on a machine without CUDA (after one line saying so; nothing runs) and when every stage ended ``ok``;
        1 when a stage failed, ran over its time or was skipped (the report says which).
    """
    import torch

    if not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE)
        return 0
    stages = build_stages(settings)
    print(format_plan(stages, settings.budget_s), flush=True)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    began = datetime.now(UTC)
    if launcher is None:
        launcher = functools.partial(run_process, cwd=settings.repo_root)
    outcomes = run_stages(stages, settings.budget_s, settings.out_dir / "logs", launcher=launcher,
                          announce=lambda line: print(line, flush=True))  # fmt: skip
    path = write_report(settings.out_dir, outcomes, budget_s=settings.budget_s, started=began)
    print(f"gpu-check: report written to {path}")
    return 0 if all(outcome.status == "ok" for outcome in outcomes) else 1
