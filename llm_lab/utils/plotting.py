"""Figures: loss curves of runs (:func:`plot_runs`) and what a model does inside on one text (attention heatmaps,
:func:`plot_attention_grid`; the logit lens, :func:`plot_logit_lens`).

Loss curves from run directories: read ``metrics.csv`` and draw one or many runs to an image file.

``metrics.csv`` (written by the Trainer) has one row per logged step with the columns step, tokens, lr,
train_loss, val_loss, grad_norm, tokens_per_second, mfu, elapsed_s; ``val_loss`` is empty on rows without
an evaluation. Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so
this works on machines without a display and inside servers or tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llm_lab.utils.csv_input import read_csv_file
from llm_lab.utils.io import atomic_write
from llm_lab.utils.outputs import image_metadata

__all__ = ["plot_attention_grid", "plot_logit_lens", "plot_runs", "read_metric_columns", "token_label"]

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
    header, rows = read_csv_file(path)  # not UTF-8, not CSV, too many fields: the file and the line are named
    if not header:
        raise ValueError(f"{path} is empty (no header row)")
    columns: dict[str, list[float | None]] = {name: [] for name in header}
    for line, row in rows:
        for name in header:
            cell = (row.get(name) or "").strip()
            try:
                columns[name].append(float(cell) if cell else None)
            except ValueError:
                raise ValueError(f"{path}:{line}: column {name!r} holds {cell[:40]!r}, not a number") from None
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
        out: the image file to write (atomically; parent directories are created), marked as an llm-lab output
            (:func:`llm_lab.utils.outputs.image_metadata`).
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
        fig.savefig(f, format=fmt, dpi=dpi, metadata=image_metadata(f".{fmt}"))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Looking inside a model (the figures of ``llm-lab inspect``)

_MAX_TICK_LABELS = 40  # beyond this many tokens, axis labels would overlap: show positions only


def token_label(text: str) -> str:
    """A token as an axis label: whitespace made visible (``␣`` for a space, ``\\n`` for a newline)."""
    return text.replace(" ", "\u2423").replace("\n", "\\n").replace("\t", "\\t") or "\u2205"


def _new_figure(figsize: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, out: str | Path, dpi: int) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = out.suffix.lstrip(".").lower() or "png"
    with atomic_write(out, "wb") as f:
        fig.savefig(f, format=fmt, dpi=dpi, metadata=image_metadata(f".{fmt}"))
    return out


def plot_attention_grid(
    attentions: Any, tokens: Sequence[str], out: str | Path, *, title: str | None = None, dpi: int = 110
) -> Path:
    """One heatmap per layer (rows) and head (columns): row ``t`` of a map is where query ``t`` looks.

    Args:
        attentions: ``(n_layer, n_head, T, T)`` attention probabilities (a tensor or array).
        tokens: the ``T`` token texts, for the axis labels (shown when ``T <= 40``).
        out: the image file (PNG/SVG/PDF by suffix), written atomically.
        title: figure title.
        dpi: resolution of raster output.
    """
    import numpy as np

    maps = np.asarray(attentions, dtype=np.float32)
    if maps.ndim != 4 or maps.shape[2] != maps.shape[3] or maps.shape[2] != len(tokens):
        raise ValueError(f"attentions must be (n_layer, n_head, T, T) with T = {len(tokens)} tokens, got {maps.shape}")
    n_layer, n_head, T, _ = maps.shape
    cell = min(3.2, max(1.6, 14.0 / max(n_head, n_layer)))
    fig = _new_figure((cell * n_head + 0.9, cell * n_layer + 0.5))
    axes = fig.subplots(n_layer, n_head, squeeze=False)
    labels = [token_label(t) for t in tokens]
    image = None
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer][head]
            image = ax.imshow(maps[layer, head], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"layer {layer + 1} head {head + 1}", fontsize=8)
            if T <= _MAX_TICK_LABELS:
                ax.set_xticks(range(T), labels, rotation=90, fontsize=5, fontfamily="monospace")
                ax.set_yticks(range(T), labels, fontsize=5, fontfamily="monospace")
            else:
                ax.tick_params(labelsize=5)
            if head == 0:
                ax.set_ylabel("query", fontsize=7)
            if layer == n_layer - 1:
                ax.set_xlabel("key", fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    if title:
        fig.suptitle(title)
    return _save(fig, out, dpi)


def plot_logit_lens(
    top_probs: Any,
    top_tokens: Sequence[Sequence[str]],
    hits: Any,
    layer_names: Sequence[str],
    tokens: Sequence[str],
    out: str | Path,
    *,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """The logit lens as a grid: rows are layers, columns positions; each cell names the top next-token prediction
    read at that layer and is coloured by its probability; a box marks a prediction equal to the actual next token.

    Args:
        top_probs: ``(n_rows, T)`` probability of each cell's top prediction.
        top_tokens: ``n_rows`` lists of ``T`` predicted token texts.
        hits: ``(n_rows, T)`` booleans: the prediction is the next token of the text.
        layer_names: the row names (``embeddings``, ``layer 1``, ...).
        tokens: the ``T`` input tokens (column labels).
        out: the image file, written atomically.
        title: figure title.
        dpi: resolution of raster output.
    """
    import numpy as np
    from matplotlib.patches import Rectangle

    probs = np.asarray(top_probs, dtype=np.float32)
    n_rows, T = probs.shape
    if len(layer_names) != n_rows or len(tokens) != T:
        raise ValueError(f"top_probs is {probs.shape}; give {n_rows} layer names and {T} tokens")
    annotate = T <= _MAX_TICK_LABELS
    fig = _new_figure((max(6.0, 0.5 * T + 2.0) if annotate else 12.0, 0.45 * n_rows + 1.8))
    ax = fig.subplots()
    image = ax.imshow(probs, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    hit_rows = np.asarray(hits, dtype=bool)
    for r in range(n_rows):
        for t in range(T):
            if annotate:
                color = "white" if probs[r, t] > 0.6 else "black"
                ax.text(t, r, token_label(top_tokens[r][t]), ha="center", va="center", fontsize=7, color=color,
                        fontfamily="monospace")  # fmt: skip
            if hit_rows[r, t]:
                ax.add_patch(Rectangle((t - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="#d62728", linewidth=1.2))
    ax.set_yticks(range(n_rows), list(layer_names), fontsize=8)
    if annotate:
        ax.set_xticks(range(T), [token_label(t) for t in tokens], rotation=90, fontsize=7, fontfamily="monospace")
    ax.set_xlabel("input token (each cell: the predicted next token; red box: it is the actual next token)")
    ax.invert_yaxis()  # the output layer on top, the embeddings at the bottom, as the stream flows up
    fig.colorbar(image, ax=ax, shrink=0.8, label="probability of the top prediction")
    ax.set_title(title or "logit lens")
    return _save(fig, out, dpi)
