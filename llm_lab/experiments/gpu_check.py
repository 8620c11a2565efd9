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
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llm_lab.experiments.tables import format_value, markdown_table
from llm_lab.utils.io import atomic_write_json, atomic_write_text
from llm_lab.utils.words import plural

__all__ = [
    "DEFAULT_BUDGET_S",
    "GpuCheckSettings",
    "Stage",
    "StageOutcome",
    "build_stages",
    "format_plan",
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
PEAK_MATMUL_SIZE = 8192
NO_CUDA_MESSAGE = "gpu-check: CUDA is not available on this machine; nothing to run."

# File names each stage leaves in the output directory (the report reads them).
ENV_FILE, TESTS_FILE, STEP_FILE, GENERATE_FILE = "env.json", "tests.xml", "step.json", "generate.json"
GPT2_STEP_FILE = "gpt2_step.json"
GPT2_CONFIG = Path("configs") / "gpt2_small.json"
# The GPT-2 stage's stand-in on a CPU (tests): the real config file, shrunk to a few thousand parameters.
GPT2_QUICK_OVERRIDES = ("model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.context_length=32",
                        "model.vocab_size=97", "train.batch_size=2")
TIME_TO_LOSS_DIR = "time_to_loss"


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
    code = f"from llm_lab.experiments.gpu_check import run_stage; run_stage({arguments})"
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
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _end_group(process)
            return None


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


# ----------------------------------------------------------------------------------- the stages' own work


def run_stage(name: str, out_dir: str, **kwargs: Any) -> None:
    """Run one stage's measurement in this process and write its result file to ``out_dir``.

    Called in a fresh process by the check (so that it can be ended at its time), or directly by the tests with
    ``device="cpu"`` and ``quick=True``.
    """
    workers = {"env": _stage_env, "step": _stage_step, "gpt2_step": _stage_gpt2_step, "generate": _stage_generate,
               "time_to_loss": _stage_ttl}
    if name not in workers:
        raise ValueError(f"unknown stage {name!r}; choose one of: {', '.join(workers)}")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    workers[name](Path(out_dir), **kwargs)


def _stage_env(out: Path, device: str = "cuda", quick: bool = False) -> None:
    import torch

    from llm_lab.core.train.flops import measure_matmul_peak

    device_ = torch.device(device)
    facts: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device_)}
    if device_.type == "cuda":
        props = torch.cuda.get_device_properties(device_)
        facts |= {
            "gpu": torch.cuda.get_device_name(device_),
            "gpu_count": torch.cuda.device_count(),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(device_))),
            "memory_gib": props.total_memory / 2**30,
            "cudnn": torch.backends.cudnn.version(),
            "bf16_supported": torch.cuda.is_bf16_supported(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        }
    size = 256 if quick else (PEAK_MATMUL_SIZE if device_.type == "cuda" else None)
    peaks = {}
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        try:
            peaks[precision] = measure_matmul_peak(device_, dtype, size=size, repeats=2 if quick else 5) / 1e12
        except ValueError:  # a dtype this device cannot multiply
            continue
    facts["peak_tflops"] = peaks
    facts["peak_matmul_size"] = size
    atomic_write_json(out / ENV_FILE, facts)


def _stage_step(out: Path, device: str = "cuda", quick: bool = False) -> None:
    from llm_lab.experiments.step_bench import (
        StepBenchConfig,
        default_10m_config,
        quick_step_config,
        run_step_benchmark,
        write_step_results,
    )

    if quick:
        configs = [dataclasses.replace(quick_step_config(device), optimizers=("adamw", "muon"))]
    else:
        full = StepBenchConfig(model=default_10m_config(), batch_size=64, device=device, warmup=3, steps=10,
                               rounds=2, peak_repeats=3, optimizers=("adamw", "muon"))  # fmt: skip
        # Eager settings first (seconds), then the compiled bf16 ones (compiling takes most of the stage): if the
        # stage is ended for its time while compiling, the eager numbers are already written.
        configs = [
            dataclasses.replace(full, compile_modes=(False,)),
            dataclasses.replace(full, compile_modes=(True,), precisions=("bf16",), baseline=False),
        ]
    merged = None
    for config in configs:
        result = run_step_benchmark(config, progress=False)
        if merged is None:
            merged = result
        else:  # the compiled rows join the eager run's table, compared with its baseline
            baseline = [row["tokens_per_second"] for row in merged.rows if row["setting"] == "baseline"]
            for row in result.rows:
                row["vs_baseline"] = row["tokens_per_second"] / baseline[0] if baseline else None
            merged.rows += result.rows
            merged.notes += result.notes
        write_step_results(merged, out / "step")
        atomic_write_json(out / STEP_FILE, dataclasses.asdict(merged))


def _stage_gpt2_step(out: Path, device: str = "cuda", repo_root: str = ".", quick: bool = False) -> None:
    """GPT-2 small's training step, bf16 and compiled (the tests' CPU stand-in: shrunk, fp32, eager)."""
    from llm_lab.experiments.step_bench import (
        StepBenchConfig,
        load_step_model_config,
        run_step_benchmark,
        write_step_results,
    )

    model, batch_size = load_step_model_config(Path(repo_root) / GPT2_CONFIG, GPT2_QUICK_OVERRIDES if quick else ())
    settings: dict[str, Any] = {"precisions": ("bf16",), "compile_modes": (True,), "warmup": 3, "steps": 10,
                                "rounds": 1, "peak_repeats": 3}
    if quick:
        settings = {"precisions": ("fp32",), "compile_modes": (False,), "warmup": 1, "steps": 2, "rounds": 1,
                    "peak_repeats": 2}
    config = StepBenchConfig(model=model, batch_size=batch_size, device=device, optimizers=("adamw",),
                             baseline=False, **settings)
    result = run_step_benchmark(config, progress=False)
    write_step_results(result, out / "gpt2_step")
    atomic_write_json(out / GPT2_STEP_FILE, dataclasses.asdict(result))


def _stage_generate(out: Path, device: str = "cuda", quick: bool = False) -> None:
    from llm_lab.experiments.generate_bench import BenchSettings, format_report, run_benchmark

    settings = dataclasses.replace(BenchSettings.quick() if quick else BenchSettings(repeats=3), device=device)
    results = run_benchmark(settings)
    atomic_write_json(out / GENERATE_FILE, results)
    atomic_write_text(out / "generate.txt", format_report(results) + "\n")


def _stage_ttl(out: Path, device: str = "cuda", data: str | None = None, repo_root: str = ".",
               quick: bool = False) -> None:  # fmt: skip
    from llm_lab.experiments.time_to_loss import QUICK_OVERRIDES, format_summary, run_time_to_loss

    overrides = [f"train.device={device.split(':')[0]}"]
    if data is None or quick:
        overrides = [*QUICK_OVERRIDES, *overrides]
    if data is None:
        data = str(out / "self_made_text.txt")
        atomic_write_text(data, _self_made_text())
    configs = Path(repo_root) / "configs"
    target_dir = out / TIME_TO_LOSS_DIR
    summary = run_time_to_loss(
        {"baseline": configs / "shakespeare_char.json", "fast": configs / "shakespeare_char_fast.json",
         "60s": configs / "shakespeare_char_60s.json"},
        data, target_dir, overrides=overrides, progress=False,
    )  # fmt: skip
    summary.environment["overrides"] = overrides
    summary.environment["data"] = str(data)
    atomic_write_json(target_dir / "summary.json", summary.to_dict())
    atomic_write_text(target_dir / "summary.md", format_summary(summary) + "\n")


def _self_made_text(n_lines: int = 400) -> str:
    """A few hundred lines of deterministic pseudo-English: enough windows for the quick time-to-loss runs."""
    words = ("the", "a", "small", "model", "learns", "patterns", "of", "text", "to", "be", "or", "not", "that",
             "is", "question", "all", "who", "wander", "are", "lost")  # fmt: skip
    lines = []
    for i in range(n_lines):
        lines.append(" ".join(words[(i * 7 + j * j) % len(words)] for j in range(8 + i % 5)) + ".")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ the report


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_test_results(path: Path) -> dict[str, Any] | None:
    """Counts and failing test ids from pytest's JUnit XML, or ``None`` when the stage left none."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures = []
    for case in root.iter("testcase"):
        if not case.get("name"):  # the test running when the stage was interrupted: no verdict
            continue
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            failures.append(name)
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts | {"failures": failures}


def _mfu_rows(step: dict[str, Any], env: dict[str, Any] | None) -> tuple[list[dict[str, Any]], str]:
    """The step rows with MFU against the GPU's measured peak (the env stage's, else the step's own)."""
    peaks = {k: v * 1e12 for k, v in (env or {}).get("peak_tflops", {}).items()}
    source = f"the env stage's {env.get('peak_matmul_size')}-wide matmul peak" if peaks else ""
    if not peaks:
        peaks = {k: v * 1e9 for k, v in step["peak_gflops"].items()}
        source = "the step benchmark's own matmul peak"
    rows = []
    for row in step["rows"]:
        achieved = row["tokens_per_second"] * step["flops_per_token"]
        rows.append(
            row
            | {
                "tflops": achieved / 1e12,
                "mfu_own_peak": achieved / peaks[row["precision"]] if row["precision"] in peaks else None,
                "mfu_bf16_peak": achieved / peaks["bf16"] if "bf16" in peaks else None,
            }
        )
    return rows, source


def write_report(
    out_dir: Path, outcomes: Sequence[StageOutcome], *, budget_s: float, started: datetime | None = None
) -> Path:
    """Write ``report.md`` and ``report.json`` from the stages' files in ``out_dir``; return the markdown path.

    A stage that ended without its result file (failed, over budget, skipped) is reported as such, with the
    tail of its log; the other stages' numbers are reported in full.
    """
    out_dir = Path(out_dir)
    env = _read_json(out_dir / ENV_FILE)
    tests = read_test_results(out_dir / TESTS_FILE)
    step = _read_json(out_dir / STEP_FILE)
    gpt2 = _read_json(out_dir / GPT2_STEP_FILE)
    generate = _read_json(out_dir / GENERATE_FILE)
    ttl = _read_json(out_dir / TIME_TO_LOSS_DIR / "summary.json")
    by_name = {outcome.name: outcome for outcome in outcomes}

    md = ["# GPU check", ""]
    when = (started or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    used = sum(outcome.used_s for outcome in outcomes)
    md.append(f"Run {when}; budget {budget_s:.0f} s, stages took {used:.0f} s.")
    md.append("")
    md += ["## Machine", ""]
    if env is not None:
        md.append(
            f"- GPU: {env.get('gpu', env.get('device'))} (x{env.get('gpu_count', 1)}), compute capability "
            f"{env.get('capability', '-')}, {format_value(env.get('memory_gib'))} GiB"
        )
        md.append(f"- torch {env['torch']}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn', '-')}")
        peaks = ", ".join(f"{k} {format_value(v)} TFLOP/s" for k, v in env.get("peak_tflops", {}).items())
        md.append(f"- measured matmul peak ({env.get('peak_matmul_size')}-wide products, best of 5): {peaks}")
    else:
        md.append("- not measured (the env stage left no result)")
    md += ["", "## Stages", ""]
    md.append(markdown_table([dataclasses.asdict(o) for o in outcomes], ("name", "status", "allowed_s", "used_s"),
                             headers={"allowed_s": "allowed s", "used_s": "used s"}, digits=3))  # fmt: skip

    md += ["## Device tests (CUDA legs)", ""]
    if tests is not None:
        md.append(f"{tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped.")
        md += [f"- failed: `{name}`" for name in tests["failures"]]
    md += _missing("tests", tests, by_name, out_dir)

    md += ["", "## Training step", ""]
    if step is not None:
        m = step["model"]
        rows, source = _mfu_rows(step, env)
        md.append(
            f"{plural(m['n_layer'], 'layer')}, {m['n_embd']} wide, context {m['context_length']}, "
            f"{step['num_parameters'] / 1e6:.1f}M parameters, batch {step['batch_size']} "
            f"({step['tokens_per_step']} tokens/step), {step['device']}; MFU against {source}."
        )
        md.append("")
        columns = ("setting", "precision", "compile", "optimizer", "ms_per_step", "tokens_per_second", "tflops",
                   "mfu_own_peak", "mfu_bf16_peak", "vs_baseline", "loss_first", "loss_last")  # fmt: skip
        headers = {"ms_per_step": "ms/step", "tokens_per_second": "tokens/s", "tflops": "TFLOP/s",
                   "mfu_own_peak": "MFU (its dtype's peak)", "mfu_bf16_peak": "MFU (bf16 peak)",
                   "vs_baseline": "x baseline"}  # fmt: skip
        md.append(markdown_table(rows, columns, headers=headers, digits=3))
        md += [f"note: {note}" for note in step.get("notes", [])]
    md += _missing("step", step, by_name, out_dir)

    md += ["", "## GPT-2 small training step", ""]
    if gpt2 is not None:
        m = gpt2["model"]
        rows, source = _mfu_rows(gpt2, env)
        md.append(
            f"{GPT2_CONFIG}: {m['n_layer']} layers, {m['n_embd']} wide, context {m['context_length']}, vocab "
            f"{m['vocab_size']}, {gpt2['num_parameters'] / 1e6:.1f}M parameters, batch {gpt2['batch_size']} "
            f"({gpt2['tokens_per_step']} tokens/step), {gpt2['device']}; MFU against {source} (target: 45% bf16)."
        )
        md.append("")
        columns = ("setting", "precision", "compile", "ms_per_step", "tokens_per_second", "tflops", "mfu_own_peak")
        headers = {"ms_per_step": "ms/step", "tokens_per_second": "tokens/s", "tflops": "TFLOP/s",
                   "mfu_own_peak": "MFU (its dtype's peak)"}
        md.append(markdown_table(rows, columns, headers=headers, digits=3))
        md += [f"note: {note}" for note in gpt2.get("notes", [])]
    md += _missing("gpt2_step", gpt2, by_name, out_dir)

    md += ["", "## Generate", ""]
    if generate is not None:
        from llm_lab.experiments.generate_bench import format_report

        md += ["```text", format_report(generate), "```"]
    md += _missing("generate", generate, by_name, out_dir)

    md += ["", "## Time to loss", ""]
    if ttl is not None:
        env_ttl = ttl.get("environment", {})
        md.append(f"data: {env_ttl.get('data')}; overrides: {' '.join(env_ttl.get('overrides', [])) or 'none'}")
        md.append("")
        md.append(_ttl_text(ttl))
    md += _missing("time_to_loss", ttl, by_name, out_dir)

    text = "\n".join(md).rstrip() + "\n"
    path = out_dir / "report.md"
    atomic_write_text(path, text)
    atomic_write_json(
        out_dir / "report.json",
        {"budget_s": budget_s, "stages": [dataclasses.asdict(o) for o in outcomes], "env": env, "tests": tests,
         "step": step, "gpt2_step": gpt2, "generate": generate, "time_to_loss": ttl},
    )  # fmt: skip
    return path


def _ttl_text(summary: dict[str, Any]) -> str:
    from llm_lab.experiments.time_to_loss import TimeToLossRun, TimeToLossSummary, format_summary

    fields = {f.name for f in dataclasses.fields(TimeToLossSummary)}
    rebuilt = TimeToLossSummary(**{k: v for k, v in summary.items() if k in fields})
    rebuilt.runs = [TimeToLossRun(**run) for run in summary["runs"]]
    rebuilt.environment = {}
    return format_summary(rebuilt)


def _missing(name: str, result: Any, by_name: dict[str, StageOutcome], out_dir: Path) -> list[str]:
    """Lines explaining why a stage has no numbers (or why they may be partial), with the log's last lines."""
    outcome = by_name.get(name)
    if outcome is None or (outcome.status == "ok" and result is not None):
        return []
    lines = [f"**{name}: {outcome.status}**" + (f" (exit {outcome.returncode})" if outcome.returncode else "")
             + ("" if result is not None else "; no result")]  # fmt: skip
    log = Path(outcome.log) if outcome.log else None
    if log is not None and log.is_file():
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        lines += ["", "```text", *tail, "```"]
    return lines
