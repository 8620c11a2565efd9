"""``make gpu-check`` without a GPU: the one-line no-CUDA exit, the budget (fake clock, fake stages), ending a
stage's whole process group at its time, and the report written from the stages' result files."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from llm_lab.experiments import gpu_check
from llm_lab.experiments.gpu_check import (
    MIN_STAGE_S,
    NO_CUDA_MESSAGE,
    GpuCheckSettings,
    Stage,
    StageOutcome,
    build_stages,
    format_plan,
    run_gpu_check,
    run_process,
    run_stage,
    run_stages,
    stage_allowances,
    write_report,
)
from llm_lab.experiments.step_bench import StepBenchResult
from llm_lab.experiments.time_to_loss import TimeToLossRun, summarize

REPO = Path(__file__).resolve().parents[2]


def _never(*args, **kwargs):
    raise AssertionError("nothing may run")


def test_without_cuda_it_says_so_in_one_line_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu"
    assert run_gpu_check(GpuCheckSettings(out_dir=out), launcher=_never) == 0
    assert capsys.readouterr().out == NO_CUDA_MESSAGE + "\n"
    assert not out.exists()


def test_the_script_exits_0_without_cuda_and_2_on_bad_arguments(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check_script", REPO / "scripts" / "gpu_check.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert script.main(["--out", str(tmp_path / "gpu")]) == 0
    assert capsys.readouterr().out == NO_CUDA_MESSAGE + "\n"
    assert script.main(["--data", str(tmp_path / "missing.txt")]) == 2
    assert f"--data {tmp_path / 'missing.txt'} is not a file" in capsys.readouterr().err
    for budget in ("5", "inf", "nan"):
        assert script.main(["--budget", budget]) == 2
        assert f"budget_s must be a number of seconds from 15 on, got {float(budget)}" in capsys.readouterr().err


class FakeMachine:
    """A fake clock and a launcher that 'runs' each stage for a scripted time and exit status.

    ``plan[name] = (seconds, returncode)``; a stage whose seconds exceed its timeout is ended at the timeout plus
    ``kill_s`` (the grace period a real stage takes to exit) and reported as ``None``.
    """

    def __init__(self, plan: dict[str, tuple[float, int]], kill_s: float = 0.0) -> None:
        self.now = 1000.0
        self.plan = plan
        self.kill_s = kill_s
        self.calls: list[tuple[str, float]] = []

    def clock(self) -> float:
        return self.now

    def launcher(self, command, timeout_s: float, log: Path) -> int | None:
        name = command[0]
        self.calls.append((name, timeout_s))
        seconds, returncode = self.plan[name]
        if seconds > timeout_s:
            self.now += timeout_s + self.kill_s
            return None
        self.now += seconds
        return returncode


def _stages(*shares: tuple[str, float]) -> list[Stage]:
    return [Stage(name, share, f"the {name} stage", (name,)) for name, share in shares]


def _run(stages, budget, machine, tmp_path):
    lines: list[str] = []
    outcomes = run_stages(stages, budget, tmp_path, launcher=machine.launcher, clock=machine.clock,
                          announce=lines.append)  # fmt: skip
    return {o.name: o for o in outcomes}, lines


def test_shares_divide_the_budget_and_the_plan_names_every_stage():
    stages = _stages(("a", 0.1), ("b", 0.6), ("c", 0.3))
    assert stage_allowances(stages, 200) == pytest.approx({"a": 20, "b": 120, "c": 60})
    plan = format_plan(stages, 200)
    assert plan.splitlines()[0].startswith("gpu-check: 3 stages within 200 s (3.3 min)")
    assert "  2. b  up to   120 s  the b stage" in plan
    real = build_stages(GpuCheckSettings(out_dir=Path("out")))
    assert [s.name for s in real] == ["env", "tests", "step", "gpt2_step", "generate", "time_to_loss"]
    assert sum(s.share for s in real) == pytest.approx(1.0)
    assert real[1].command[1:8] == ("-m", "pytest", "-m", "device", "--devices", "cuda", "-q")


def test_unused_time_passes_on_and_a_stage_over_its_time_is_ended(tmp_path):
    """a (20 s) uses 5: b may take 60 + 15 = 75 s; b runs over and is ended at 75; c gets only its own 20."""
    machine = FakeMachine({"a": (5, 0), "b": (500, 0), "c": (3, 1)})
    outcomes, lines = _run(_stages(("a", 0.2), ("b", 0.6), ("c", 0.2)), 100, machine, tmp_path)
    assert machine.calls == [("a", pytest.approx(20)), ("b", pytest.approx(75)), ("c", pytest.approx(20))]
    assert (outcomes["a"].status, outcomes["a"].used_s, outcomes["a"].returncode) == ("ok", 5, 0)
    assert (outcomes["b"].status, outcomes["b"].used_s, outcomes["b"].returncode) == ("over budget", 75, None)
    assert (outcomes["c"].status, outcomes["c"].returncode) == ("failed", 1)
    assert outcomes["c"].log == str(tmp_path / "c.log")
    assert lines[:2] == [f"[1/3] a: up to 20 s (log: {tmp_path / 'a.log'})", "[1/3] a: ok after 5 s"]
    assert "[2/3] b: over budget after 75 s" in lines


def test_the_whole_budget_is_a_hard_limit_and_later_stages_are_skipped(tmp_path):
    """b overshoots its end by the 30 s a real stage may take to stop: too little is left for c and d to start."""
    machine = FakeMachine({"a": (1, 0), "b": (500, 0), "c": (1, 0), "d": (1, 0)}, kill_s=30)
    stages = _stages(("a", 0.1), ("b", 0.7), ("c", 0.1), ("d", 0.1))
    outcomes, lines = _run(stages, 200, machine, tmp_path)
    # a: 20 s, uses 1; b: 140 + 19 = 159 s, ended at 1 + 159 + 30 = 190 s into the run; 10 s left < MIN_STAGE_S.
    assert machine.calls == [("a", pytest.approx(20)), ("b", pytest.approx(159))]
    assert MIN_STAGE_S > 200 - 190
    assert outcomes["c"].status == outcomes["d"].status == "skipped"
    assert outcomes["c"].used_s == 0 and outcomes["c"].allowed_s == pytest.approx(10)
    assert "[3/4] c: skipped, 10 s of the budget left" in lines
    assert "[4/4] d: skipped, 10 s of the budget left" in lines


def test_a_share_below_the_minimum_is_skipped_not_started(tmp_path):
    machine = FakeMachine({"tiny": (1, 0), "big": (1, 0)})
    outcomes, _ = _run(_stages(("tiny", 0.05), ("big", 0.95)), 100, machine, tmp_path)
    assert outcomes["tiny"].status == "skipped" and machine.calls == [("big", pytest.approx(95))]


def test_a_stage_ended_for_time_takes_its_children_with_it(tmp_path):
    """The stage starts a grandchild (as pytest starts torchrun); ending the stage ends the grandchild too."""
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(60)"
    )
    start = time.monotonic()
    assert run_process([sys.executable, "-c", code], 1.5, tmp_path / "logs" / "stage.log") is None
    assert time.monotonic() - start < 15
    assert (tmp_path / "logs" / "stage.log").read_text().startswith("started\n")  # then KeyboardInterrupt
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(grandchild):
        time.sleep(0.05)
    assert not _alive(grandchild)
    assert run_process([sys.executable, "-c", "raise SystemExit(3)"], 10, tmp_path / "quick.log") == 3


@pytest.mark.slow
@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_a_tests_stage_ended_for_its_time_keeps_the_results_of_the_tests_that_ran(tmp_path, sigint):
    """Also when the check itself runs with SIGINT ignored (started with ``&`` from a script): the stage gets it
    back, so it can still be ended gently and write its results (the conftest restores this process's handler)."""
    if sigint == "ignored":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    (tmp_path / "test_sample.py").write_text(
        "import time\n\ndef test_quick():\n    pass\n\ndef test_slow():\n    time.sleep(120)\n"
    )
    junit = tmp_path / "out.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
               f"--rootdir={tmp_path}", str(tmp_path / "test_sample.py")]  # fmt: skip
    assert run_process(command, 10, tmp_path / "stage.log", cwd=tmp_path) is None
    assert gpu_check.read_test_results(junit) == {"passed": 1, "failed": 0, "skipped": 0, "failures": []}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie that init has not reaped yet counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().split(")")[-1].split()[0] == "Z")


# ---------------------------------------------------------------------------------------------- the report

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.core.model.test_on_device" name="test_forward[cuda-fp32]" time="0.1"/>
<testcase classname="tests.core.model.test_on_device" name="test_forward[cuda-bf16]" time="0.1"/>
<testcase classname="tests.core.train.test_on_device" name="test_resume[cuda-fp16]" time="0.2">
<failure message="boom">AssertionError</failure></testcase>
<testcase classname="tests.core.train.test_distributed_on_device" name="test_ddp_two_gpus" time="0">
<skipped message="a 2-process nccl run needs 2 GPUs"/></testcase>
<testcase time="0.000" />
</testsuite></testsuites>"""


def _write_stage_files(out: Path) -> None:
    """Result files shaped as the stages write them (built from the same dataclasses and functions)."""
    out.mkdir(parents=True, exist_ok=True)
    env = {"torch": "2.9.0+cu128", "cuda": "12.8", "device": "cuda:0", "gpu": "NVIDIA H200", "gpu_count": 1,
           "capability": "9.0", "memory_gib": 139.8, "cudnn": 91002, "bf16_supported": True, "tf32_matmul": False,
           "peak_tflops": {"bf16": 800.0, "fp16": 810.0, "fp32": 50.0}, "peak_matmul_size": 8192}  # fmt: skip
    (out / "env.json").write_text(json.dumps(env))
    (out / "tests.xml").write_text(JUNIT)
    # 2e12 FLOP/s achieved in bf16 (1e6 tokens/s x 2e6 FLOP/token): MFU 0.25% of 800 TFLOP/s.
    row = {"setting": "ours", "precision": "bf16", "compile": True, "optimizer": "AdamW fused", "ms_per_step": 16.384,
           "tokens_per_second": 1e6, "mfu_fp32_peak": 0.1, "mfu_bf16_peak": 0.1, "vs_baseline": 3.0,
           "loss_first": 4.2, "loss_last": 3.9}  # fmt: skip
    step = StepBenchResult(rows=[row], model={"vocab_size": 65, "context_length": 256, "n_layer": 6, "n_head": 6,
                                              "n_embd": 384}, batch_size=64, tokens_per_step=16384,
                           num_parameters=10_750_000, flops_per_token=2e6, peak_gflops={"fp32": 1.0, "bf16": 2.0},
                           device="cuda", notes=[])  # fmt: skip
    import dataclasses

    (out / "step.json").write_text(json.dumps(dataclasses.asdict(step)))
    # GPT-2 small: 1e5 tokens/s x 7.6e8 FLOP/token = 76 TFLOP/s, MFU 9.5% of 800 TFLOP/s.
    gpt2_row = row | {"tokens_per_second": 1e5, "ms_per_step": 327.68}
    gpt2 = dataclasses.replace(step, rows=[gpt2_row], model={"vocab_size": 50257, "context_length": 1024,
                                                              "n_layer": 12, "n_head": 12, "n_embd": 768},
                               batch_size=32, tokens_per_step=32768, num_parameters=124_439_808,
                               flops_per_token=7.6e8)
    (out / "gpt2_step.json").write_text(json.dumps(dataclasses.asdict(gpt2)))
    generate = {
        "settings": {"n_layer": 6, "n_embd": 384, "vocab_size": 50257, "parameters": 30_000_000, "device": "cuda",
                     "threads": 16, "repeats": 3, "prompt_len": 16, "new_tokens": 256, "context_new_tokens": 33},
        "roofline": {"weight_bytes_per_token": 1.2e8, "read_bandwidth_bytes_per_second": 2.4e12,
                     "tokens_per_second": 20000.0},
        "throughput": [{"batch": 1, "matmul_only_tokens_per_second": 9000.0, "kernels_only_tokens_per_second": 15000.0,
                        "kernels_roofline_fraction": 0.75, "ours_tokens_per_second": 700.0,
                        "hf_tokens_per_second": 350.0, "ratio": 2.0, "same_tokens": True, "token_agreement": 1.0,
                        "roofline_fraction": 0.035}],
        "per_token": [{"context": 64, "ours_ms": 1.4, "ours_vs_shortest": 1.0, "hf_ms": 2.9, "hf_vs_shortest": 1.0}],
    }  # fmt: skip
    (out / "generate.json").write_text(json.dumps(generate))
    runs = [TimeToLossRun("baseline", "b.json", "o", 0, 40.0, 8.0, 30.0, 1500, 1.87, 1.7, 2000, 1),
            TimeToLossRun("fast", "f.json", "o", 0, 15.0, 6.0, 12.0, 500, 1.85, 1.85, 500, 1)]  # fmt: skip
    summary = summarize(runs, 1.88)
    summary.environment = {"data": "tiny_shakespeare.txt", "overrides": ["train.device=cuda"]}
    (out / "time_to_loss").mkdir()
    (out / "time_to_loss" / "summary.json").write_text(json.dumps(summary.to_dict()))


def test_the_report_holds_the_machine_every_number_and_mfu_against_the_measured_peak(tmp_path):
    _write_stage_files(tmp_path)
    log = tmp_path / "logs" / "time_to_loss.log"
    log.parent.mkdir()
    log.write_text("".join(f"line {i}\n" for i in range(40)))
    outcomes = [StageOutcome("env", "ok", 21, 9), StageOutcome("tests", "failed", 168, 120, 1),
                StageOutcome("step", "ok", 105, 80, 0), StageOutcome("generate", "ok", 63, 40, 0),
                StageOutcome("time_to_loss", "over budget", 100, 100, None, str(log))]  # fmt: skip
    path = write_report(tmp_path, outcomes, budget_s=420)
    text = path.read_text()
    assert "- GPU: NVIDIA H200 (x1), compute capability 9.0, 139.8 GiB" in text
    assert "- torch 2.9.0+cu128, CUDA 12.8, cuDNN 91002" in text
    assert "bf16 800 TFLOP/s, fp16 810 TFLOP/s, fp32 50 TFLOP/s" in text
    assert "budget 420 s, stages took 349 s" in text
    assert "| time_to_loss | over budget | 100       | 100    |" in text
    assert "2 passed, 1 failed, 1 skipped." in text
    assert "- failed: `tests.core.train.test_on_device::test_resume[cuda-fp16]`" in text
    assert "**tests: failed** (exit 1)" in text
    # MFU from tokens/s x FLOPs/token over the env stage's peak, not the step benchmark's own (2 GFLOP/s) one.
    table_row = next(line for line in text.splitlines() if line.startswith("| ours"))
    cells = [cell.strip() for cell in table_row.strip("|").split("|")]
    assert cells[:9] == ["ours", "bf16", "yes", "AdamW fused", "16.4", "1.00e+06", "2", "0.0025", "0.0025"]
    assert "MFU against the env stage's 8192-wide matmul peak" in text
    assert ("configs/gpt2_small.json: 12 layers, 768 wide, context 1024, vocab 50257, 124.4M parameters, batch 32 "
            "(32768 tokens/step)") in text
    gpt2_row = next(line for line in text.splitlines() if line.startswith("| ours") and "| 100000 " in line)
    assert [cell.strip() for cell in gpt2_row.strip("|").split("|")][-2:] == ["76", "0.095"]
    assert "    1        700.0       350.0    2.00x" in text  # the decode benchmark's own report
    assert "ratio (fast / baseline time to 1.88): 0.400 (speed-up 2.50x)" in text
    assert "data: tiny_shakespeare.txt; overrides: train.device=cuda" in text
    # The stage ended for its time: named, with the last lines of its log.
    assert "**time_to_loss: over budget**" in text and "line 39" in text and "line 24\n" not in text
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["tests"]["failed"] == 1 and report["stages"][4]["status"] == "over budget"


def test_a_stage_without_results_is_reported_as_such(tmp_path):
    outcomes = [StageOutcome("env", "skipped", 3, 0), StageOutcome("step", "over budget", 50, 50, None)]
    text = write_report(tmp_path, outcomes, budget_s=60).read_text()
    assert "- not measured (the env stage left no result)" in text
    assert "**step: over budget**; no result" in text


def test_with_cuda_faked_the_check_plans_runs_and_reports(tmp_path, monkeypatch, capsys):
    """The whole flow with a fake launcher that leaves the result files: exit 0 when every stage is ok."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out = tmp_path / "gpu"
    seen = []

    def launcher(command, timeout_s, log):
        seen.append(command)
        if not (out / "env.json").exists():  # the first stage leaves every stage's files, as if all had run
            _write_stage_files(out)
        return 0

    assert run_gpu_check(GpuCheckSettings(out_dir=out, budget_s=420), launcher=launcher) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("gpu-check: 6 stages within 420 s (7.0 min)")
    assert printed[-1] == f"gpu-check: report written to {out / 'report.md'}"
    assert len(seen) == 6 and "NVIDIA H200" in (out / "report.md").read_text()

    assert run_gpu_check(GpuCheckSettings(out_dir=out, budget_s=420), launcher=lambda *a: None) == 1


@pytest.mark.slow
def test_the_stage_workers_write_what_the_report_reads(tmp_path):
    """env, step, generate and time_to_loss run for real (CPU, quick sizes); the report shows their numbers."""
    pytest.importorskip("transformers")
    names = ("env", "step", "gpt2_step", "generate", "time_to_loss")
    for name in names:
        run_stage(name, str(tmp_path), device="cpu", quick=True, **({"repo_root": str(REPO)} if name in (
            "time_to_loss", "gpt2_step") else {}))  # fmt: skip
    outcomes = [StageOutcome(name, "ok", 60, 1, 0) for name in names]
    text = write_report(tmp_path, outcomes, budget_s=240).read_text()
    assert "torch " + torch.__version__ in text
    # fp32 and bf16 rows for each optimizer (AdamW, Muon), and the baseline; then the GPT-2 stage's one row. On a CPU
    # without bf16 units the step stage leaves bf16 out of its defaults (cpu_bf16_slowdown): fp32 rows only.
    from llm_lab.core.train.precision import cpu_bf16_slowdown

    precisions = 1 if cpu_bf16_slowdown() is not None else 2
    assert text.count("| ours ") == 2 * precisions + 1 and text.count("| Muon, NS in ") == precisions
    assert "| baseline " in text
    assert "greedy throughput" in text and "ratio of whole-process wall times" in text
    assert "no result" not in text
    assert "configs/gpt2_small.json: 1 layers, 32 wide, context 32" in text  # the real file, shrunk for a CPU
    assert gpu_check.ENV_FILE in os.listdir(tmp_path)
