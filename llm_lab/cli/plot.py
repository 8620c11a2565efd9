"""``llm-lab plot RUN_DIR [RUN_DIR ...] [--out FILE.png]``: loss curves of runs, over ``llm_lab.utils.plotting``."""

from __future__ import annotations

import argparse
from pathlib import Path

from llm_lab.utils.outputs import check_output_file
from llm_lab.utils.plotting import plot_runs
from llm_lab.utils.words import plural


def _plot(args: argparse.Namespace) -> int:
    runs = [Path(r) for r in args.runs]
    if args.labels is not None and len(args.labels) != len(runs):
        labels, given = plural(len(args.labels), "label"), plural(len(runs), "run")
        raise ValueError(f"--labels gives {labels} for {given}; give one per run")
    if args.out is None:
        if len(runs) > 1:
            raise ValueError("with several runs, say where the figure goes: --out FILE.png")
        args.out = (runs[0] if runs[0].is_dir() else runs[0].parent) / "loss.png"
    # The figure replaces only an earlier figure of llm-lab's (llm_lab.utils.outputs), checked before any drawing.
    check_output_file(args.out, "--out")
    source = dict(zip(args.labels, runs, strict=True)) if args.labels else runs
    out = plot_runs(source, args.out, x_axes=args.x, title=args.title, log_y=args.log_y)
    print(f"wrote {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="draw train/val loss curves of runs to an image",
        description="Draw train and validation loss against step and tokens seen from RUN_DIR/metrics.csv. "
        "Several runs are drawn on the same axes, one colour each.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (or metrics.csv files)")
    parser.add_argument("--out", type=Path, default=None,
                        help="image file (.png/.svg/.pdf); default RUN_DIR/loss.png. An existing file is replaced "
                        "only if llm-lab drew it (its mark), never a file of yours")
    parser.add_argument("--labels", nargs="+", default=None, help="one legend label per run (default: directory names)")
    parser.add_argument(
        "--x",
        nargs="+",
        default=["step", "tokens"],
        choices=["step", "tokens", "elapsed_s"],
        help="x axes, one panel each",
    )
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument("--log-y", action="store_true", help="logarithmic loss axis")
    parser.set_defaults(func=_plot)
