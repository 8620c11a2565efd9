"""The report of ``make gpu-check``: ``report.md`` and ``report.json`` from whatever result files the stages left.

A stage that ended without its file (failed, over budget, skipped) is reported as such with the tail of its log;
the other stages' numbers are reported in full, MFU against the GPU's measured matmul peak.
"""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_lab.experiments.gpu_check_stages import (
    ENV_FILE,
    GENERATE_FILE,
    GPT2_CONFIG,
    GPT2_STEP_FILE,
    STEP_FILE,
    TESTS_FILE,
    TIME_TO_LOSS_DIR,
)
from llm_lab.experiments.tables import format_value, markdown_table
from llm_lab.utils.io import atomic_write_json, atomic_write_text
from llm_lab.utils.words import plural

if TYPE_CHECKING:
    from llm_lab.experiments.gpu_check import StageOutcome

__all__ = ["read_test_results", "write_report"]


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
