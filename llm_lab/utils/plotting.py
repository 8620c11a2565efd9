"""Loss curves from run directories: read ``metrics.csv`` and draw one or many runs to an image file.

``metrics.csv`` (written by the Trainer) has one row per logged step with the columns step, tokens, lr,
train_loss, val_loss, grad_norm, tokens_per_second, mfu, elapsed_s; ``val_loss`` is empty on rows without
an evaluation. Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so
this works on machines without a display and inside servers or tests.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from llm_lab.utils.io import atomic_write

__all__ = ["read_metric_columns", "plot_runs"]

_X_LABELS = {"step": "step", "tokens": "tokens seen", "elapsed_s": "time (s)"}
_LINESTYLES = ("-", "--", ":", "-.")
_METRIC_LABELS = {"train_loss": "train", "val_loss": "val"}


def _metrics_csv(run: str | Path) -> Path:
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.csv at {path}; pass a run directory written by `llm-lab train`")
    return path


def read_metric_columns(run: str | Path) -> dict[str, list[float | None]]:
    """Read a run's ``metrics.csv`` (given the run directory or the file) into columns.

    Returns:
        ``{column: [value per row]}``, values as floats, ``None`` where a cell is empty (e.g. ``val_loss`` on rows
        without an evaluation).

    Raises:
        FileNotFoundError: no ``metrics.csv`` there.
        ValueError: the file has no header, or a cell is not a number.
    """
    path = _metrics_csv(run)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise ValueError(f"{path} is empty (no header row)")
        columns: dict[str, list[float | None]] = {name: [] for name in reader.fieldnames}
        for line, row in enumerate(reader, start=2):
            for name in reader.fieldnames:
                cell = (row.get(name) or "").strip()
                try:
                    columns[name].append(float(cell) if cell else None)
                except ValueError:
                    raise ValueError(f"{path}:{line}: column {name!r} holds {cell!r}, not a number") from None
    return columns


def _points(xs: list[float | None], ys: list[float | None]) -> tuple[list[float], list[float]]:
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if x is not None and y is not None and math.isfinite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_runs(
    runs: str | Path | Sequence[str | Path] | Mapping[str, str | Path],
    out: str | Path,
    *,
    x_axes: Sequence[str] = ("step", "tokens"),
    metrics: Sequence[str] = ("train_loss", "val_loss"),
    title: str | None = None,
    log_y: bool = False,
    dpi: int = 120,
) -> Path:
    """Draw the curves of one or more runs, one panel per x axis, and save the figure (PNG, SVG or PDF by suffix).

    Each run gets one colour; each metric one line style (train solid, val dashed with markers).

    Args:
        runs: a run directory (or its ``metrics.csv``), a list of them (labelled by directory name), or a
            mapping ``{label: run}`` for your own labels.
        out: the image file to write (atomically; parent directories are created).
        x_axes: columns for the x axes, one panel each: ``"step"``, ``"tokens"`` and/or ``"elapsed_s"``.
        metrics: columns to draw on the y axis (default: train and validation loss).
        title: figure title (default: none).
        log_y: logarithmic y axis.
        dpi: resolution of raster output.

    Returns:
        ``Path(out)``.

    Raises:
        ValueError: no runs, a run without any row, or a requested column missing from a run's CSV.
        FileNotFoundError: a run without ``metrics.csv``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if isinstance(runs, Mapping):
        labelled = [(str(label), Path(run)) for label, run in runs.items()]
    elif isinstance(runs, str | Path):
        labelled = [(None, Path(runs))]
    else:
        labelled = [(None, Path(run)) for run in runs]
    if not labelled:
        raise ValueError("no runs to plot")
    if not x_axes or not metrics:
        raise ValueError("need at least one x axis and one metric")

    data = []
    for label, run in labelled:
        columns = read_metric_columns(run)
        name = label if label is not None else (run.name if run.is_dir() else run.parent.name)
        missing = [c for c in (*x_axes, *metrics) if c not in columns]
        if missing:
            raise ValueError(f"{_metrics_csv(run)} has no column {missing[0]!r}; it has: {', '.join(columns)}")
        if not columns[x_axes[0]]:
            raise ValueError(f"{_metrics_csv(run)} has no rows yet")
        data.append((name, columns))

    fig = Figure(figsize=(6.0 * len(x_axes), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(x_axes), squeeze=False)[0]
    palette = [f"C{i % 10}" for i in range(len(data))]
    for ax, x_name in zip(axes, x_axes, strict=True):
        for color, (name, columns) in zip(palette, data, strict=True):
            for k, metric in enumerate(metrics):
                xs, ys = _points(columns[x_name], columns[metric])
                if not xs:
                    continue
                few = len(xs) <= 60  # markers help on sparse curves (validation), clutter dense ones
                short = _METRIC_LABELS.get(metric, metric)
                label = short if len(data) == 1 else f"{name} {short}"
                ax.plot(
                    xs,
                    ys,
                    color=color,
                    linestyle=_LINESTYLES[k % len(_LINESTYLES)],
                    marker="o" if few and k > 0 else None,
                    markersize=3,
                    linewidth=1.5,
                    label=label,
                )
        ax.set_xlabel(_X_LABELS.get(x_name, x_name))
        if x_name in ("step", "tokens"):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss" if all(m.endswith("loss") for m in metrics) else ", ".join(metrics))
        if log_y:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    elif len(data) == 1:
        fig.suptitle(data[0][0])

    out = Path(out)
    fmt = out.suffix.lstrip(".").lower() or "png"
    with atomic_write(out, "wb") as f:
        fig.savefig(f, format=fmt, dpi=dpi)
    return out
