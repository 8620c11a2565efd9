"""Figures of the benchmarks (matplotlib, drawn off-screen with the Agg backend, saved as PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_lab.utils.io import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_attention_benchmark(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Time (forward; forward+backward) and peak memory (forward+backward) against sequence length.

    One column per dtype; one colour per backend, one line style per head size; log-log axes.
    """
    plt = _pyplot()
    dtypes = list(dict.fromkeys(row["dtype"] for row in rows))
    modes = list(dict.fromkeys(row["mode"] for row in rows))
    backends = list(dict.fromkeys(row["backend"] for row in rows))
    head_dims = list(dict.fromkeys(row["head_dim"] for row in rows))
    has_memory = any(row.get("peak_mem_mib") is not None for row in rows)
    panels = [(mode, "time_ms", f"{mode} time (ms)") for mode in modes]
    if has_memory:
        memory_mode = "fwd_bwd" if "fwd_bwd" in modes else modes[0]
        panels.append((memory_mode, "peak_mem_mib", f"{memory_mode} peak memory (MiB)"))
    fig, axes = plt.subplots(
        len(panels), len(dtypes), figsize=(5.5 * len(dtypes), 3.6 * len(panels)), squeeze=False
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for col, dtype in enumerate(dtypes):
        for row_idx, (mode, key, label) in enumerate(panels):
            ax = axes[row_idx][col]
            for b_idx, backend in enumerate(backends):
                for h_idx, head_dim in enumerate(head_dims):
                    points = sorted(
                        (r["seq_len"], r[key])
                        for r in rows
                        if r["dtype"] == dtype and r["mode"] == mode and r["backend"] == backend
                        and r["head_dim"] == head_dim and r.get(key) is not None
                    )
                    if not points:
                        continue
                    xs, ys = zip(*points, strict=True)
                    ax.plot(
                        xs, ys, marker="o", markersize=3, color=colors[b_idx % len(colors)],
                        linestyle=styles[h_idx % len(styles)], label=f"{backend}, head {head_dim}",
                    )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length")
            ax.set_ylabel(label)
            ax.set_title(dtype)
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_loss_curves(
    curves: dict[str, dict[str, Sequence[tuple[float, float]]]],
    path: str | Path,
    title: str = "",
    x_label: str = "step",
) -> Path:
    """Train (solid) and validation (dashed, dots) loss of several runs in one figure, one colour per run.

    Args:
        curves: run label -> {"train": [(x, loss), ...], "val": [(x, loss), ...]} (either may be empty).
        path: where the PNG goes.
        title: figure title.
        x_label: what x is (``step`` or ``tokens``).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for idx, (label, curve) in enumerate(curves.items()):
        color = colors[idx % len(colors)]
        train = list(curve.get("train", ()))
        val = list(curve.get("val", ()))
        if train:
            xs, ys = zip(*train, strict=True)
            ax.plot(xs, ys, color=color, alpha=0.6, linewidth=1, label=f"{label} train")
        if val:
            xs, ys = zip(*val, strict=True)
            ax.plot(xs, ys, color=color, linestyle="--", marker="o", markersize=3, label=f"{label} val")
    ax.set_xlabel(x_label)
    ax.set_ylabel("loss (nats/token)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)
