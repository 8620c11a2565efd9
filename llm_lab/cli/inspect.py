"""``llm-lab inspect PACKAGE --text "..." --out DIR``: token probabilities, attention maps and the logit lens.

Writes into ``DIR``: ``tokens.csv``/``tokens.md`` (each token's probability given the ones before it and the top
alternatives), ``attention.png`` (one heatmap per layer and head), ``logit_lens.csv``/``logit_lens.md`` and
``logit_lens.png``, and ``llm_lab_output.json`` listing them. ``DIR`` is new, empty or an earlier ``inspect``
output, which is replaced whole (:mod:`llm_lab.utils.outputs`). The computation is
:func:`llm_lab.core.inspect.inspect_text`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from llm_lab.cli.sample import positive_int
from llm_lab.utils.words import plural


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="token probabilities, attention heatmaps and the logit lens of a model on one text",
        description="Run one traced forward pass over TEXT and write tables (CSV + markdown) and figures (PNG) of "
        "what the model does inside. Probabilities are the model's raw distribution (no temperature or filters).",
    )
    parser.add_argument("package", metavar="PACKAGE", help="a package directory (or a run directory)")
    parser.add_argument("--text", required=True, help="the text to inspect (at most the model's context in tokens)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the tables and figures: "
                        "a new or empty one, or one inspect wrote (replaced whole); never a folder of yours")
    parser.add_argument("--top", type=positive_int, default=5, help="alternatives listed per token (default 5)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default=None, help="weights to use")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from llm_lab.core.inspect import inspect_text
    from llm_lab.core.package.io import load_package_or_run
    from llm_lab.utils.outputs import check_output_directory, output_directory

    check_output_directory(args.out)  # before the model is loaded: a folder of yours is refused first
    _, tokenizer, model = load_package_or_run(args.package, checkpoint=args.checkpoint, device=args.device)
    found = inspect_text(model, tokenizer, args.text, top_n=min(args.top, model.config.vocab_size))
    name = Path(args.package).resolve().name
    with output_directory(args.out, "inspect") as staged:  # written beside --out, swapped in when complete
        written = _write(found, name, staged.path)
    scored = [s.logprob for s in found.logprobs[1:]]
    if scored:
        mean = -sum(scored) / len(scored)
        shown = plural(len(found.token_ids), "token")
        print(f"{shown}; mean loss {mean:.4f} nats/token (perplexity {math.exp(mean):.3f})")
    for path in written:
        print(f"wrote {staged.final(path)}")
    return 0


def _write(found, name: str, out: Path) -> list[Path]:
    """The tables and figures of ``found`` (an ``inspect_text`` result) in the folder ``out``; returns the files."""
    from llm_lab.experiments.tables import markdown_table, write_csv
    from llm_lab.utils.io import atomic_write_text
    from llm_lab.utils.plotting import plot_attention_grid, plot_logit_lens

    written = []

    token_rows = found.token_rows()
    written.append(write_csv(out / "tokens.csv", token_rows))
    atomic_write_text(out / "tokens.md", f"# Token probabilities: {name}\n\n" + markdown_table(token_rows))
    written.append(out / "tokens.md")

    written.append(
        plot_attention_grid(found.attentions, found.tokens, out / "attention.png", title=f"attention: {name}")
    )

    lens_rows = found.lens_rows()
    written.append(write_csv(out / "logit_lens.csv", lens_rows))
    # Markdown: a grid, one row per layer, one column per position, each cell the top prediction and its probability.
    grid = []
    for layer_name in found.lens_names:
        row = {"layer": layer_name}
        for t, cell in enumerate(r for r in lens_rows if r["layer"] == layer_name):
            row[f"{t} {cell['token']}"] = f"{cell['top_prediction']} {cell['top_prob']:.2f}"
        grid.append(row)
    atomic_write_text(out / "logit_lens.md", f"# Logit lens: {name}\n\n" + markdown_table(grid[::-1]))
    written.append(out / "logit_lens.md")
    top_ids = found.lens_top_ids[..., 0]  # (n_layer + 1, T)
    hits = [
        [t + 1 < len(found.token_ids) and int(i) == found.token_ids[t + 1] for t, i in enumerate(row)]
        for row in top_ids
    ]
    written.append(
        plot_logit_lens(
            found.lens_top_logprobs[..., 0].exp(),
            [[found.id_text[int(i)] for i in row] for row in top_ids],
            hits,
            found.lens_names,
            found.tokens,
            out / "logit_lens.png",
            title=f"logit lens: {name}",
        )
    )
    return written
