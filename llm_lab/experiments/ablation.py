"""Ablation of the speed-run options: each option's effect on validation loss at a fixed step budget and at a
fixed time budget, mean and standard deviation over seeds.

Every arm is the base run config plus a few ``--set``-style overrides (one option switched); arms that change
nothing about the base (e.g. ``optimizer=adamw`` when the base already uses AdamW) are dropped, the base itself
is always the first arm. The arms come from the registries (every optimizer in ``OPTIMIZERS``, every schedule
in ``SCHEDULES``), from :data:`MODEL_OPTIONS` (the model's speed-run switches: switched on, or off where the base
has them on) and, over a Muon base, Muon's usual momentum (where the base's differs) and its momentum warm-up
(where the base's momentum is above the warm-up's start, so that it changes something).

Two budgets, each with ``seeds`` runs per arm, one training at a time, in this process:

1. **steps**: every arm trains ``steps`` optimizer steps (the base's ``max_steps`` unless given). The loss
   difference at equal steps is what the option buys per step.
2. **time**: every arm trains for as many steps as fit in ``time_budget_s`` at *its own* speed, measured in pass
   1 (median seconds per step over its seeds), with the schedule spanning those steps. An option that costs time
   per step (Muon's orthogonalisation, bigger tables) pays for it here.

Each run goes through the real training path (:func:`llm_lab.core.train.run.prepare_run` and the trainer) with
evaluation only at its last step. Outputs under ``OUT``: ``runs.csv`` (one row per run), ``summary.csv`` and
``summary.md`` (one row per arm and budget: mean, std, difference to the base).

Timing is wall-clock in this process: run it on a quiet machine (``--threads 1`` pins one core) or read the time
budget's column as preliminary.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from llm_lab.core.train.run import prepare_run
from llm_lab.core.train.run_config import RunConfig
from llm_lab.experiments.tables import markdown_table, write_csv
from llm_lab.utils.io import atomic_write_text
from llm_lab.utils.words import plural

__all__ = ["MODEL_OPTIONS", "QUICK_OVERRIDES", "SUMMARY_COLUMNS", "Arm", "default_arms", "run_ablation"]

MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "zero_init_residual": ("model.zero_init_residual=true",),
    "zero_init_head": ("model.zero_init_head=true", "model.tie_embeddings=false"),
    "bigram_embedding": ("model.bigram_embedding=true",),
    "value_embeddings": ("model.value_embeddings=true",),
}
"""The model's speed-run switches and what each arm sets (a zero head needs an untied head)."""

QUICK_OVERRIDES: tuple[str, ...] = (
    "model.n_layer=1",
    "model.n_embd=32",
    "model.n_head=2",
    "model.n_kv_head=2",
    "model.context_length=16",
    "train.batch_size=4",
    "train.max_steps=6",
    "train.warmup_steps=2",
    "train.eval_batches=2",
    "train.peak_flops=1e9",
)
"""``--quick``: a tiny model and a handful of steps, to check the outputs in seconds (not a measurement)."""

RUN_COLUMNS = ("arm", "budget", "seed", "steps", "val_loss", "train_s", "s_per_step")
SUMMARY_COLUMNS = ("arm", "budget", "steps", "val_loss_mean", "val_loss_std", "delta_vs_base", "s_per_step")


@dataclass(frozen=True)
class Arm:
    """One option switched on over the base: a name and its ``section.key=value`` overrides."""

    name: str
    overrides: tuple[str, ...]


def default_arms(base: RunConfig) -> list[Arm]:
    """``base`` first, then one arm per optimizer, schedule and model option that differs from ``base``."""
    from llm_lab.core.train.config import TrainerConfig
    from llm_lab.core.train.optim import OPTIMIZERS
    from llm_lab.core.train.schedule import MUON_MOMENTUM_START, SCHEDULES

    candidates = [Arm(f"optimizer={name}", (f"train.optimizer={name}",)) for name in OPTIMIZERS]
    candidates += [Arm(f"schedule={name}", (f"train.schedule={name}",)) for name in SCHEDULES]
    for name, overrides in MODEL_OPTIONS.items():
        # An option the base already has is switched off instead: the arm then shows what it buys in the base.
        on = getattr(base.model, name)
        candidates.append(Arm(f"{name}=false", (f"model.{name}=false",)) if on else Arm(name, overrides))
    if base.train.optimizer == "muon":
        default_momentum = TrainerConfig.muon_momentum
        if base.train.muon_momentum != default_momentum:  # the base's momentum against Muon's usual one
            candidates.append(Arm(f"muon_momentum={default_momentum}", (f"train.muon_momentum={default_momentum}",)))
        if base.train.muon_momentum > MUON_MOMENTUM_START:  # below the warm-up's start it changes nothing
            warmup = max(1, base.train.max_steps // 4)  # Muon's momentum warm-up over the first quarter of the steps
            candidates.append(Arm("muon_momentum_warmup", (f"train.muon_momentum_warmup_steps={warmup}",)))
    arms = [Arm("base", ())]
    for arm in candidates:
        if base.with_overrides(list(arm.overrides)).to_dict() != base.to_dict():
            arms.append(arm)
    return arms


def _budget_overrides(base: RunConfig, steps: int) -> list[str]:
    """Train ``steps`` steps with the schedule spanning them, and evaluate once, at the end."""
    warmup = min(base.train.warmup_steps, steps)
    return [
        f"train.max_steps={steps}",
        f"train.warmup_steps={warmup}",
        "train.lr_decay_steps=null",
        f"train.eval_interval={steps}",
        f"train.log_interval={steps}",
        "train.sample_interval=0",
    ]


def _train_once(base: RunConfig, arm: Arm, data: Path, out: Path, steps: int, seed: int) -> dict[str, Any]:
    config = base.with_overrides([*arm.overrides, *_budget_overrides(base, steps), f"train.seed={seed}"])
    prepared = prepare_run(config, data, out, overwrite=True)
    result = prepared.start(progress=False).train()
    train_s = float(result.history[-1]["elapsed_s"])
    return {"val_loss": result.val_loss, "train_s": train_s, "s_per_step": train_s / result.step, "steps": result.step}


def _summary_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    base_mean: dict[str, float] = {}
    for budget in ("steps", "time"):
        for arm in dict.fromkeys(r["arm"] for r in runs):
            mine = [r for r in runs if r["arm"] == arm and r["budget"] == budget]
            if not mine:
                continue
            losses = [r["val_loss"] for r in mine]
            mean = statistics.fmean(losses)
            if arm == "base":
                base_mean[budget] = mean
            rows.append(
                {
                    "arm": arm,
                    "budget": budget,
                    "steps": statistics.median(r["steps"] for r in mine),
                    "val_loss_mean": mean,
                    "val_loss_std": statistics.stdev(losses) if len(losses) > 1 else math.nan,
                    "delta_vs_base": mean - base_mean[budget] if budget in base_mean else None,
                    "s_per_step": statistics.median(r["s_per_step"] for r in mine),
                }
            )
    return rows


def run_ablation(
    base: RunConfig,
    data: str | Path,
    out_dir: str | Path,
    *,
    arms: Sequence[Arm] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    steps: int | None = None,
    time_budget_s: float | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run every arm at the step budget, then (if ``time_budget_s``) at the time budget; write the tables.

    Args:
        base: the run config every arm starts from.
        data: the corpus (text file or prepared directory).
        out_dir: run directories go to ``out_dir/runs/<budget>/<arm>/seed<k>``; tables to ``out_dir``.
        arms: the arms (default :func:`default_arms`); the first must be the base.
        seeds: one run per seed per arm and budget.
        steps: the step budget (default: ``base.train.max_steps``).
        time_budget_s: the time budget in training seconds per run; ``None`` skips that pass.
        progress: a tqdm bar over the runs.

    Returns:
        ``(runs, summary)``: the rows of ``runs.csv`` and of ``summary.csv``.
    """
    data, out_dir = Path(data), Path(out_dir)
    arms = list(arms) if arms is not None else default_arms(base)
    steps = steps if steps is not None else base.train.max_steps
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if not seeds:
        raise ValueError("give at least one seed")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"the time budget must be positive, got {time_budget_s}")
    total = len(arms) * len(seeds) * (2 if time_budget_s is not None else 1)
    bar = tqdm(total=total, disable=not progress, unit="run")
    runs: list[dict[str, Any]] = []

    def one(arm: Arm, budget: str, n_steps: int, seed: int) -> None:
        bar.set_description(f"{budget}: {arm.name} seed {seed}")
        out = out_dir / "runs" / budget / arm.name.replace("=", "-") / f"seed{seed}"
        result = _train_once(base, arm, data, out, n_steps, seed)
        runs.append({"arm": arm.name, "budget": budget, "seed": seed} | result)
        bar.update(1)

    try:
        for arm in arms:
            for seed in seeds:
                one(arm, "steps", steps, seed)
        if time_budget_s is not None:
            for arm in arms:
                per_step = statistics.median(
                    r["s_per_step"] for r in runs if r["arm"] == arm.name and r["budget"] == "steps"
                )
                for seed in seeds:
                    one(arm, "time", max(1, int(time_budget_s / per_step)), seed)
    finally:
        bar.close()
    summary = _summary_rows(runs)
    write_csv(out_dir / "runs.csv", runs, RUN_COLUMNS)
    write_csv(out_dir / "summary.csv", summary, SUMMARY_COLUMNS)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    header = (
        f"# Ablation: {plural(len(arms), 'arm')} x {plural(len(seeds), 'seed')}; step budget {steps}"
        + (f", time budget {time_budget_s:g} s" if time_budget_s is not None else "")
        + f"\n\nLoad average at the end: {load}. `delta_vs_base`: mean val loss minus the base's (negative helps).\n\n"
    )
    atomic_write_text(out_dir / "summary.md", header + markdown_table(summary, SUMMARY_COLUMNS, digits=4) + "\n")
    return runs, summary
