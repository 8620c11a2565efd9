"""Collect run directories into one report: a table (markdown + CSV) and one figure comparing the loss curves.

A run directory is any directory holding a ``metrics.csv`` (written by the Trainer); its ``run.json``, when
present, supplies the configuration columns, and its ``runtime.json`` what the run resolved ``auto`` to (the
precision and CPU threads that actually ran). Per run: the model shape, precision and batch, the steps and
tokens reached, the final train loss, the best and final validation loss, and the median tokens/s and MFU of
its logged rows (the first row, which includes warm-up, is left out when there are others).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_lab.core.train.checkpoint import RUN_FILE
from llm_lab.core.train.trainer import RUNTIME_FILE
from llm_lab.experiments.tables import markdown_table, write_csv
from llm_lab.utils.io import atomic_write_text
from llm_lab.utils.json_input import load_json_file
from llm_lab.utils.plotting import plot_runs, read_metric_columns

REPORT_COLUMNS: tuple[str, ...] = (
    "run",
    "config",
    "parameters",
    "precision",
    "threads",
    "batch_size",
    "steps",
    "tokens",
    "train_loss",
    "best_val_loss",
    "val_loss",
    "tokens_per_second",
    "mfu",
)
HEADERS = {
    "train_loss": "final train loss",
    "best_val_loss": "best val loss",
    "val_loss": "final val loss",
    "tokens_per_second": "tokens/s",
    "batch_size": "batch",
}


def find_runs(root: str | Path) -> list[Path]:
    """Every directory under ``root`` (``root`` included) that holds a ``metrics.csv``, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; give the folder that holds your run directories")
    return sorted(path.parent for path in root.rglob("metrics.csv"))


def _finite(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _steady_median(values: list[float | None]) -> float | None:
    values = _finite(values)
    values = values[1:] if len(values) > 1 else values  # the first row includes warm-up
    return statistics.median(values) if values else None


def _config_summary(run_json: dict[str, Any]) -> tuple[str | None, int | None, str | None, int | None]:
    from llm_lab.core.model.config import MiniGPTConfig
    from llm_lab.core.model.memory import count_parameters
    from llm_lab.utils.config_loader import config_from_dict

    model = run_json.get("model") or {}
    train = run_json.get("train") or {}
    summary = parameters = None
    if model:
        try:
            config = config_from_dict(MiniGPTConfig, model)  # fills defaults for keys the file leaves out
        except (ValueError, TypeError):
            config = None  # a run.json from another version: show what it says, leave the count empty
        fields = dataclasses.asdict(config) if config is not None else model
        summary = (
            f"L{fields.get('n_layer')} H{fields.get('n_head')} C{fields.get('n_embd')} "
            f"T{fields.get('context_length')} V{fields.get('vocab_size')} "
            f"{fields.get('pos_encoding')}/{fields.get('norm')}/{fields.get('mlp')}"
        )
        if config is not None:
            parameters = count_parameters(config)  # from the shapes alone: no memory, no init time
    return summary, parameters, train.get("precision"), train.get("batch_size")


def divergence(columns: dict[str, list[float | None]]) -> str | None:
    """``"val_loss -inf at step 6"`` when a run's last logged validation (or training) loss is NaN or infinite,
    else ``None``: such a run diverged, and no earlier loss may stand in as its final or best one."""
    steps = columns.get("step", [])
    for name in ("val_loss", "train_loss"):
        logged = [(step, v) for step, v in zip(steps, columns.get(name, []), strict=False) if v is not None]
        if logged and not math.isfinite(logged[-1][1]):
            step, value = logged[-1]
            return f"{name} {value} at step {int(step) if step is not None else '?'}"
    return None


def summarize_run(run_dir: str | Path, root: str | Path | None = None) -> dict[str, Any] | None:
    """One report row for a run directory, or ``None`` when its ``metrics.csv`` has no rows yet.

    A run whose last logged loss is NaN or infinite has ``"diverged"`` set (see :func:`divergence`), its final
    validation loss is that value and it has no best one.
    """
    run_dir = Path(run_dir)
    columns = read_metric_columns(run_dir)
    steps = _finite(columns.get("step", []))
    if not steps:
        return None
    run_json: dict[str, Any] = {}
    if (run_dir / RUN_FILE).is_file():
        run_json = load_json_file(run_dir / RUN_FILE)  # strict: duplicate keys, NaN, deep nesting refused
        if not isinstance(run_json, dict):
            raise ValueError(f"{run_dir / 'run.json'}: expected a JSON object with 'model' and 'train' sections")
    summary, parameters, precision, batch_size = _config_summary(run_json)
    runtime: dict[str, Any] = {}
    if (run_dir / RUNTIME_FILE).is_file():
        runtime = load_json_file(run_dir / RUNTIME_FILE)
        if not isinstance(runtime, dict):
            raise ValueError(f"{run_dir / RUNTIME_FILE}: expected a JSON object with 'precision' and 'threads'")
    diverged = divergence(columns)
    val = _finite(columns.get("val_loss", []))
    train = _finite(columns.get("train_loss", []))
    logged_val = [v for v in columns.get("val_loss", []) if v is not None]
    tokens = _finite(columns.get("tokens", []))
    name = str(run_dir.relative_to(root)) if root is not None and run_dir != Path(root) else run_dir.name
    return {
        "run": name or ".",
        "config": summary,
        "parameters": parameters,
        "precision": runtime.get("precision", precision),  # what ran; run.json may only say "auto"
        "threads": runtime.get("threads"),
        "batch_size": batch_size,
        "steps": int(max(steps)),
        "tokens": int(max(tokens)) if tokens else None,
        "train_loss": train[-1] if train else None,
        "best_val_loss": min(val) if val and not diverged else None,
        "val_loss": logged_val[-1] if diverged and logged_val else (val[-1] if val else None),
        "diverged": diverged,
        "tokens_per_second": _steady_median(columns.get("tokens_per_second", [])),
        "mfu": _steady_median(columns.get("mfu", [])),
    }


Roots = str | Path | Sequence[str | Path]


def _as_roots(root: Roots) -> list[Path]:
    return [Path(root)] if isinstance(root, (str, Path)) else [Path(r) for r in root]


def collect_runs(root: Roots) -> tuple[list[dict[str, Any]], list[Path], list[Path]]:
    """Summarise every run under ``root`` (one folder, or several: then each run's name starts with its folder).

    Returns:
        ``(rows, run_dirs, skipped)``: one row per run with data, their directories, and runs without rows.
    """
    roots = _as_roots(root)
    rows, dirs, skipped = [], [], []
    for folder in roots:
        for run_dir in find_runs(folder):
            row = summarize_run(run_dir, folder)
            if row is None:
                skipped.append(run_dir)
                continue
            if len(roots) > 1:
                row["run"] = f"{folder.as_posix()}/{row['run']}"
            rows.append(row)
            dirs.append(run_dir)
    return rows, dirs, skipped


def write_report(root: Roots, out_dir: str | Path, title: str = "Runs") -> dict[str, Path]:
    """Collect the runs under ``root`` (a folder or several); write ``report.md``, ``report.csv``, ``curves.png``.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        ValueError: no run under ``root`` has any logged row.
    """
    rows, dirs, skipped = collect_runs(root)
    where = ", ".join(f"`{r}`" for r in _as_roots(root))
    if not rows:
        raise ValueError(
            f"no run directories with logged steps under {where.replace('`', '')} (looked for metrics.csv); "
            "train something with `llm-lab train` first or pass the folder that holds your runs"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": write_csv(out_dir / "report.csv", rows, REPORT_COLUMNS),
        "md": out_dir / "report.md",
        "png": out_dir / "curves.png",
    }
    notes = (
        "tokens/s and MFU: medians over each run's logged rows (the first, with warm-up, left out); MFU is "
        "against the matmul peak the run measured (or was given) for its precision.\n"
    )
    diverged = [f"`{row['run']}` ({row['diverged']})" for row in rows if row["diverged"]]
    if diverged:
        notes += "Diverged (the last logged loss is NaN or infinite; no best loss): " + ", ".join(diverged) + "\n"
    if skipped:
        notes += "Runs without logged rows yet (skipped): " + ", ".join(f"`{p}`" for p in skipped) + "\n"
    table = markdown_table(rows, REPORT_COLUMNS, headers=HEADERS, digits=4)
    atomic_write_text(paths["md"], f"# {title}\n\nCollected from {where}: {len(rows)} run(s).\n{notes}\n{table}")
    labels: dict[str, Path] = {}
    for row, run_dir in zip(rows, dirs, strict=True):
        labels[row["run"]] = run_dir
    plot_runs(labels, paths["png"], x_axes=("step", "tokens"), title=f"{title}: loss curves")
    return paths
