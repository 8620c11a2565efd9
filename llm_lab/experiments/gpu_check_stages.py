"""The stages' own work in ``make gpu-check``: each measurement, run in a process of its own, leaves one result file.

:func:`run_stage` is what each stage's process calls (the tests call it directly with ``device="cpu"`` and
``quick=True``); :mod:`llm_lab.experiments.gpu_check` plans the stages, runs them within the budget and has the
report (:mod:`llm_lab.experiments.gpu_check_report`) read the files named here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from llm_lab.utils.io import atomic_write_json, atomic_write_text

__all__ = ["ENV_FILE", "GENERATE_FILE", "GPT2_STEP_FILE", "STEP_FILE", "TESTS_FILE", "TIME_TO_LOSS_DIR", "run_stage"]

# The env stage measures the matmul peak on products this wide (the denominator of every MFU in the report).
PEAK_MATMUL_SIZE = 8192
# File names each stage leaves in the output directory (the report reads them).
ENV_FILE, TESTS_FILE, STEP_FILE, GENERATE_FILE = "env.json", "tests.xml", "step.json", "generate.json"
GPT2_STEP_FILE = "gpt2_step.json"
GPT2_CONFIG = Path("configs") / "gpt2_small.json"
# The GPT-2 stage's stand-in on a CPU (tests): the real config file, shrunk to a few thousand parameters.
GPT2_QUICK_OVERRIDES = ("model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.context_length=32",
                        "model.vocab_size=97", "train.batch_size=2")
TIME_TO_LOSS_DIR = "time_to_loss"


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
