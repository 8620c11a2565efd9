"""Figures of the benchmarks, drawn on matplotlib's Agg canvas (no pyplot, no display needed) and saved as PNG.

Loss curves of runs are drawn by ``llm_lab.utils.plotting.plot_runs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_lab.utils.io import atomic_write
from llm_lab.utils.outputs import image_metadata


def new_figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib ``Figure`` on an Agg canvas: no global backend switch, no window, safe in tests and servers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save a figure as PNG, atomically, with the llm-lab output mark (:mod:`llm_lab.utils.outputs`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi, metadata=image_metadata(".png"))
    return path


def plot_attention_benchmark(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Time (forward; forward+backward) and peak memory (forward+backward) against sequence length.

    One column per dtype; one colour per backend, one line style per head size; log-log axes.
    """
    dtypes = list(dict.fromkeys(row["dtype"] for row in rows))
    modes = list(dict.fromkeys(row["mode"] for row in rows))
    backends = list(dict.fromkeys(row["backend"] for row in rows))
    head_dims = list(dict.fromkeys(row["head_dim"] for row in rows))
    has_memory = any(row.get("peak_mem_mib") is not None for row in rows)
    panels = [(mode, "time_ms", f"{mode} time (ms)") for mode in modes]
    if has_memory:
        memory_mode = "fwd_bwd" if "fwd_bwd" in modes else modes[0]
        panels.append((memory_mode, "peak_mem_mib", f"{memory_mode} peak memory (MiB)"))
    fig = new_figure((5.5 * len(dtypes), 3.6 * len(panels)))
    axes = fig.subplots(len(panels), len(dtypes), squeeze=False)
    colors = [f"C{i}" for i in range(10)]
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
    return save_figure(fig, path)
