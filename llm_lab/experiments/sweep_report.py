"""The report of a sweep, rebuilt from its run folders alone: ``report.md``, ``results.csv``, ``runs.csv`` and PNGs.

Per run (``runs.csv``), read from the run's own ``metrics.csv`` through the run report's
:func:`~llm_lab.experiments.report.summarize_run`: the final and best validation loss, the median tokens/s of the
logged rows (the first, with warm-up, left out), the parameters, and the training wall time (``elapsed_s`` of the
last row: time spent training and evaluating, across resumed segments, without start-up).

Per setting (``results.csv``, one row per setting, best first): each of those as mean, standard deviation over
seeds and 95% t interval of the mean; the difference of the mean final validation loss to the baseline setting,
with the p-value of Welch's two-sided t-test and a marker (``*`` p < 0.05, ``**`` < 0.01, ``***`` < 0.001,
``n.s.``; ``n/a`` with one seed); and the rank by mean final validation loss. Figures: ``val_curves.png`` (the
validation loss of each setting: mean over seeds as a line, +- one standard deviation as a band; against the step,
or against time for a time budget) and ``val_loss.png`` (each setting's final validation loss, its seeds as dots
and the 95% interval as a bar).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_lab.experiments.plots import new_figure, save_figure
from llm_lab.experiments.report import summarize_run
from llm_lab.experiments.stats import SIGNIFICANCE_LEVEL, significance_marker, summarize, welch_t_test
from llm_lab.experiments.sweep import finished_record, sweep_runs
from llm_lab.experiments.sweep_plan import RunSpec, SweepPlan
from llm_lab.experiments.tables import format_value, markdown_table, write_csv
from llm_lab.utils.io import atomic_write_text
from llm_lab.utils.plotting import read_metric_columns
from llm_lab.utils.words import plural

__all__ = ["METRICS", "RUN_COLUMNS", "collect_sweep", "setting_results", "write_sweep_report"]

# (column, label): the per-run numbers summarised over seeds.
METRICS: tuple[tuple[str, str], ...] = (
    ("val_loss", "final val loss"),
    ("best_val_loss", "best val loss"),
    ("tokens_per_second", "tokens/s"),
    ("wall_time_s", "wall time (s)"),
)
RUN_COLUMNS: tuple[str, ...] = (
    "setting", "seed", "run", "parameters", "steps", "tokens", "train_loss", "val_loss", "best_val_loss",
    "tokens_per_second", "wall_time_s",
)  # fmt: skip


def _summary_columns() -> list[str]:
    columns = []
    for metric, _ in METRICS:
        columns += [f"{metric}_mean", f"{metric}_std", f"{metric}_ci95_low", f"{metric}_ci95_high"]
    return columns


# Per extra result (a harness task's metric, ``llm-lab sweep --eval-tasks``): the columns after RESULT_COLUMNS.
_EXTRA_PARTS = ("mean", "std", "ci95_low", "ci95_high", "delta", "p_value", "significance")

RESULT_COLUMNS: tuple[str, ...] = (
    "rank", "setting", "seeds", "parameters", "steps", *_summary_columns(), "val_loss_delta", "p_value", "significance",
)  # fmt: skip


def run_row(spec: RunSpec, run_dir: Path) -> dict[str, Any] | None:
    """One run's numbers from its folder, or ``None`` when it has no logged rows."""
    summary = summarize_run(run_dir)
    if summary is None:
        return None
    elapsed = [v for v in read_metric_columns(run_dir).get("elapsed_s", []) if v is not None]
    return summary | {
        "setting": spec.setting.name,
        "seed": spec.seed,
        "run": spec.name,
        "wall_time_s": elapsed[-1] if elapsed else None,
    }


@dataclass
class SweepRuns:
    """A sweep's plan and its runs by state: finished (with their rows; extra results under ``"extra"``),
    diverged (name -> the error) and not finished yet."""

    plan: SweepPlan
    rows: list[tuple[RunSpec, dict[str, Any]]] = field(default_factory=list)
    diverged: dict[str, str] = field(default_factory=dict)
    unfinished: list[str] = field(default_factory=list)


def collect_sweep(out_dir: str | Path) -> SweepRuns:
    """Read every run of the sweep in ``out_dir`` from its folder."""
    out_dir = Path(out_dir)
    plan, specs = sweep_runs(out_dir)
    runs = SweepRuns(plan)
    for spec in specs:
        record = finished_record(out_dir, spec.name)
        if record is not None and record["diverged"]:
            runs.diverged[spec.name] = record["diverged"]
            continue
        row = run_row(spec, out_dir / "runs" / spec.name) if record is not None else None
        if row is None:
            runs.unfinished.append(spec.name)
        elif row["diverged"]:  # its last logged loss is NaN or infinite: no earlier loss stands in as final
            runs.diverged[spec.name] = f"the {row['diverged']}"
        else:
            runs.rows.append((spec, row | {"extra": record["extra"]}))  # type: ignore[index]
    return runs


def setting_results(plan: SweepPlan, rows: Sequence[tuple[RunSpec, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per setting that has finished runs, ranked by mean final validation loss (best first)."""
    by_setting: dict[str, list[dict[str, Any]]] = {}
    for spec, row in rows:
        by_setting.setdefault(spec.setting.name, []).append(row)
    baseline_losses = [r["val_loss"] for r in by_setting.get(plan.baseline or "", []) if r["val_loss"] is not None]
    results = []
    for setting in plan.settings:
        runs = by_setting.get(setting.name)
        if not runs:
            continue
        out: dict[str, Any] = {
            "setting": setting.name,
            "seeds": len(runs),
            "parameters": runs[0]["parameters"],
            "steps": runs[0]["steps"],
        }
        for metric, _ in METRICS:
            values = [r[metric] for r in runs if r.get(metric) is not None and math.isfinite(r[metric])]
            s = summarize(values) if values else None
            out |= {
                f"{metric}_mean": s.mean if s else None,
                f"{metric}_std": s.std if s else None,
                f"{metric}_ci95_low": s.ci_low if s else None,
                f"{metric}_ci95_high": s.ci_high if s else None,
            }
        losses = [r["val_loss"] for r in runs if r["val_loss"] is not None]
        if setting.name == plan.baseline:
            out |= {"val_loss_delta": 0.0, "p_value": None, "significance": "baseline"}
        elif baseline_losses and losses:
            test = welch_t_test(losses, baseline_losses)
            out |= {
                "val_loss_delta": statistics.fmean(losses) - statistics.fmean(baseline_losses),
                "p_value": test.p_value if test else None,
                "significance": significance_marker(test.p_value if test else None),
            }
        out |= _extra_results(runs, by_setting.get(plan.baseline or "", []), setting.name == plan.baseline)
        results.append(out)
    ranked = sorted(results, key=lambda r: (r["val_loss_mean"] is None, r["val_loss_mean"] or 0.0))
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank
    return ranked


def extra_metrics(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The numeric extra results of the runs (``llm-lab sweep --eval-tasks``: ``"task:metric"``), first seen first."""
    names: dict[str, None] = {}
    for row in rows:
        for key, value in (row.get("extra") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                names.setdefault(key)
    return list(names)


def _extra_results(runs: list[dict[str, Any]], baseline: list[dict[str, Any]], is_baseline: bool) -> dict[str, Any]:
    """Each extra result over seeds (mean, std, 95% interval), its difference to the baseline and Welch's p."""
    out: dict[str, Any] = {}
    for name in extra_metrics(runs):
        values = [float(r["extra"][name]) for r in runs if isinstance((r.get("extra") or {}).get(name), (int, float))]
        s = summarize(values) if values else None
        out |= {
            f"{name}_mean": s.mean if s else None,
            f"{name}_std": s.std if s else None,
            f"{name}_ci95_low": s.ci_low if s else None,
            f"{name}_ci95_high": s.ci_high if s else None,
        }
        base = [float(r["extra"][name]) for r in baseline if isinstance((r.get("extra") or {}).get(name), (int, float))]
        if is_baseline:
            out |= {f"{name}_delta": 0.0, f"{name}_p_value": None, f"{name}_significance": "baseline"}
        elif base and values:
            test = welch_t_test(values, base)
            out |= {
                f"{name}_delta": statistics.fmean(values) - statistics.fmean(base),
                f"{name}_p_value": test.p_value if test else None,
                f"{name}_significance": significance_marker(test.p_value if test else None),
            }
    return out


def _mean_std_ci(row: dict[str, Any], metric: str, digits: int = 4) -> str:
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if mean is None:
        return "-"
    text = format_value(float(mean), digits)
    if std is not None:
        low, high = (format_value(float(row[f"{metric}_ci95_{end}"]), digits) for end in ("low", "high"))
        text += f" +- {format_value(float(std), 2)} [{low}, {high}]"
    return text


def markdown_results(results: Sequence[dict[str, Any]], extras: Sequence[str] = ()) -> str:
    """The per-setting table: mean +- std [95% interval] per metric, the difference to the baseline and its test;
    then each extra result (harness tasks) the same way, with its difference to the baseline and significance."""
    table_rows = []
    for row in results:
        cells: dict[str, Any] = {"rank": row["rank"], "setting": row["setting"], "seeds": row["seeds"],
                                 "parameters": row["parameters"]}  # fmt: skip
        for metric, label in METRICS:
            cells[label] = _mean_std_ci(row, metric, digits=4 if "loss" in metric else 3)
        delta = row.get("val_loss_delta")
        cells["delta vs baseline"] = "-" if delta is None else f"{delta:+.4f}"
        cells["p (Welch)"] = row.get("p_value")
        cells["sig."] = row.get("significance") or "-"
        for name in extras:
            delta = row.get(f"{name}_delta")
            sig = row.get(f"{name}_significance") or "-"
            cells[name] = _mean_std_ci(row, name) + ("" if delta is None else f" ({delta:+.4f}, {sig})")
        table_rows.append(cells)
    return markdown_table(table_rows, digits=3)


def _curves(spec_rows: Sequence[tuple[RunSpec, dict[str, Any]]], out_dir: Path, by_time: bool) -> dict[str, Any]:
    """Per setting: the evaluation steps every seed logged, the mean x (step or time) and the val loss mean/std."""
    per_setting: dict[str, list[dict[float, tuple[float, float]]]] = {}
    for spec, _ in spec_rows:
        columns = read_metric_columns(out_dir / "runs" / spec.name)
        points = {
            step: (val, elapsed)
            for step, val, elapsed in zip(columns["step"], columns["val_loss"], columns["elapsed_s"], strict=True)
            if step is not None and val is not None and math.isfinite(val)
        }
        per_setting.setdefault(spec.setting.name, []).append(points)
    curves = {}
    for name, seeds in per_setting.items():
        steps = sorted(set.intersection(*(set(p) for p in seeds)))
        xs = [statistics.fmean(p[s][1] for p in seeds) if by_time else s for s in steps]
        values = [[p[s][0] for p in seeds] for s in steps]
        means = [statistics.fmean(v) for v in values]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        curves[name] = (xs, means, stds)
    return curves


def plot_validation_curves(plan: SweepPlan, rows: Sequence[tuple[RunSpec, dict[str, Any]]], out_dir: Path,
                           path: Path) -> Path:  # fmt: skip
    """Each setting's validation loss: the mean over seeds as a line and +- one standard deviation as a band."""
    by_time = plan.time_budget_s is not None
    curves = _curves(rows, out_dir, by_time)
    fig = new_figure((7.0, 4.4))
    ax = fig.subplots()
    for k, (name, (xs, means, stds)) in enumerate(curves.items()):
        color = f"C{k % 10}"
        ax.plot(xs, means, color=color, marker="o", markersize=3, linewidth=1.5, label=name)
        low = [m - s for m, s in zip(means, stds, strict=True)]
        high = [m + s for m, s in zip(means, stds, strict=True)]
        ax.fill_between(xs, low, high, color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("training time (s), mean over seeds" if by_time else "step")
    ax.set_ylabel("validation loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    n = max(len(plan.seeds), 1)
    ax.set_title(f"validation loss: mean over {n} seed{'s' if n > 1 else ''}, band +- 1 std")
    return save_figure(fig, path)


def plot_final_losses(results: Sequence[dict[str, Any]], rows: Sequence[tuple[RunSpec, dict[str, Any]]],
                      path: Path) -> Path:  # fmt: skip
    """Each setting's final validation loss: every seed as a dot, the mean and its 95% interval as a bar."""
    order = [r["setting"] for r in results]
    fig = new_figure((7.0, 0.9 + 0.45 * len(order)))
    ax = fig.subplots()
    for y, row in enumerate(results):
        seeds = [r["val_loss"] for spec, r in rows if spec.setting.name == row["setting"] and r["val_loss"] is not None]
        ax.scatter(seeds, [y] * len(seeds), color="0.5", s=12, zorder=2)
        mean, low, high = row["val_loss_mean"], row["val_loss_ci95_low"], row["val_loss_ci95_high"]
        color = "C3" if row.get("significance") == "baseline" else "C0"
        if low is not None:
            ax.plot([low, high], [y, y], color=color, linewidth=3, alpha=0.6, zorder=1)
        ax.plot([mean], [y], marker="D", color=color, zorder=3)
    ax.set_yticks(range(len(order)), order)
    ax.invert_yaxis()
    ax.set_xlabel("final validation loss")
    ax.set_title("dots: seeds; diamond and bar: mean and 95% interval; red: baseline", fontsize="small")
    ax.grid(True, axis="x", alpha=0.3)
    return save_figure(fig, path)


def _plan_summary(plan: SweepPlan) -> str:
    m, t = plan.base.model, plan.base.train
    budget = (f"equal time: {plan.time_budget_s:g} s per run (schedule scaled to the steps that fill it)"
              if plan.time_budget_s is not None else f"equal steps: {t.max_steps} per run")  # fmt: skip
    seeds = ", ".join(map(str, plan.seeds))
    return (
        f"Data: `{plan.data}`. Base model: {plural(m.n_layer, 'layer')}, {plural(m.n_head, 'head')}, {m.n_embd} wide, "
        "context "
        f"{m.context_length}, {m.norm}, {m.mlp}, {m.pos_encoding}. Budget: {budget}; batch {t.batch_size}, lr "
        f"{t.lr:g}, device {t.device}. Seeds: {seeds}. Baseline: **{plan.baseline}**.\n"
    )


def write_sweep_report(
    out_dir: str | Path, report_dir: str | Path | None = None, *, baseline: str | None = None, title: str = "Sweep"
) -> dict[str, Path]:
    """Rebuild the report of the sweep in ``out_dir`` from its run folders (into ``report_dir``, default the same).

    Args:
        out_dir: the sweep folder.
        report_dir: where the report goes (default: ``out_dir``).
        baseline: compare against this setting instead of the sweep's own baseline.
        title: the report's heading.

    Raises:
        ValueError: no sweep there, an unknown baseline, or no finished run yet.
    """
    out_dir = Path(out_dir)
    report_dir = Path(report_dir) if report_dir is not None else out_dir
    runs = collect_sweep(out_dir)
    plan, rows, unfinished = runs.plan, runs.rows, runs.unfinished
    if baseline is not None:
        names = [s.name for s in plan.settings]
        if baseline not in names:
            raise ValueError(f"baseline {baseline!r} is not a setting of the sweep in {out_dir}; choose from: {names}")
        plan.baseline = baseline
    if not rows:
        raise ValueError(f"the sweep in {out_dir} has no finished run yet; run (or resume) it with `llm-lab sweep`")
    results = setting_results(plan, rows)
    extras = extra_metrics([r for _, r in rows])
    extra_columns = [f"{name}_{part}" for name in extras for part in _EXTRA_PARTS]
    report_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "md": report_dir / "report.md",
        "csv": write_csv(report_dir / "results.csv", results, [*RESULT_COLUMNS, *extra_columns]),
        "runs_csv": write_csv(report_dir / "runs.csv", [r for _, r in rows], RUN_COLUMNS),
        "curves_png": plot_validation_curves(plan, rows, out_dir, report_dir / "val_curves.png"),
        "loss_png": plot_final_losses(results, rows, report_dir / "val_loss.png"),
    }
    notes = (
        "Each cell: mean +- standard deviation over seeds [95% t interval of the mean]. tokens/s: median of each "
        "run's logged rows (the first, with warm-up, left out). Wall time: training and evaluation time of the run "
        "(start-up excluded). 'delta vs baseline': difference of the mean final validation loss; p: Welch's "
        f"two-sided t-test (unequal variances) on the final validation losses of the seeds; sig.: `*` p < "
        f"{SIGNIFICANCE_LEVEL}, `**` p < 0.01, `***` p < 0.001, `n.s.` not significant, `n/a` fewer than 2 seeds "
        "(no correction for testing several settings). Rows ranked by mean final validation loss.\n"
    )
    if runs.diverged:
        notes += "\nDiverged (loss became NaN or infinite; left out of the statistics): " + "; ".join(
            f"{name} ({error})" for name, error in runs.diverged.items()
        ) + ".\n"
    if unfinished:
        notes += f"\nNot finished yet (left out): {', '.join(unfinished)}.\n"
    total = len(rows) + len(runs.diverged) + len(unfinished)
    text = (
        f"# {title}\n\n{_plan_summary(plan)}\n{len(rows)} finished run(s) of {total}.\n\n"
        f"{markdown_results(results, extras)}\n{notes}\n![validation curves](val_curves.png)\n\n"
        "![final validation loss](val_loss.png)\n"
    )
    atomic_write_text(paths["md"], text)
    return paths
