"""Train the standard character-level model on tiny Shakespeare (configs/shakespeare_char.json), then sample.

    python scripts/p1_train_char_real.py                          # 2000 steps, ~0.8M parameters, CPU minutes
    python scripts/p1_train_char_real.py --set train.max_steps=200 --out runs/quick
    python scripts/p1_train_char_real.py --resume                 # continue an interrupted run (its run.json)

This is ``llm-lab train --config configs/shakespeare_char.json --data ... --out ...`` with defaults filled in:
the corpus is your ``data/tiny_shakespeare.txt`` (``llm-lab data download tiny_shakespeare`` fetches it), else a
shared copy in ``../shared/data/`` beside the checkout (``default_corpus_path``). Samples are printed every
``train.sample_interval`` steps through ``llm_lab.core.decode.generate_text``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llm_lab.cli import main as llm_lab_main
from llm_lab.cli.threads import add_threads_argument
from llm_lab.core.data.download import default_corpus_path

REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="text file or prepared directory (default: data/tiny_shakespeare.txt, yours first, else a shared copy "
        "in ../shared/data beside the checkout)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="run config (default: configs/shakespeare_char.json; with --resume: the run's own run.json)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/shakespeare_char"), help="run directory (default: %(default)s)"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out")
    mode.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    add_threads_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data = args.data or default_corpus_path(REPO)
    if not data.exists():
        print(
            f"p1_train_char_real: error: {data} not found; fetch it with "
            "`llm-lab data download tiny_shakespeare --out data/` or pass --data FILE",
            file=sys.stderr,
        )
        return 2
    config = args.config
    if config is None and not args.resume:
        config = REPO / "configs" / "shakespeare_char.json"
    # Resuming without --config continues the run as it was started (its run.json), --set overrides included.
    command = ["train", "--data", str(data), "--out", str(args.out)]
    command += ["--config", str(config)] if config is not None else []
    command += [f"--set={o}" for o in args.overrides]
    command += ["--resume"] if args.resume else ["--overwrite"] if args.overwrite else []
    command += ["--threads", str(args.threads)] if args.threads is not None else []
    return llm_lab_main(command)


if __name__ == "__main__":
    sys.exit(main())
