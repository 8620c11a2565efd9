"""Benchmark: our byte-level BPE vs HF `tokenizers` (training) and `tiktoken` (encoding, same ranks).

    python scripts/bench_tokenizer.py                       # tiny Shakespeare, vocab 1024 and 4096, 5 repeats
    python scripts/bench_tokenizer.py --data my.txt --vocab-sizes 2048 --repeats 3 --json out.json

Needs the dev dependencies (`pip install -r requirements-dev.txt`). Targets: training within 2x of HF at vocab
4096, encoding within 3x of tiktoken. What is timed is described in llm_lab/core/tokenization/benchmark.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llm_lab.cli.threads import add_threads_argument, apply_threads_option
from llm_lab.core.data.download import default_corpus_path
from llm_lab.core.tokenization.benchmark import format_table, run_tokenizer_benchmark
from llm_lab.utils.io import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="UTF-8 text file (default: tiny Shakespeare, your data/ first: see default_corpus_path)")
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement; the median is reported")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON to this file")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    args.data = args.data or default_corpus_path(REPO_ROOT)
    try:
        apply_threads_option(args.threads)
        rows = run_tokenizer_benchmark(args.data, args.vocab_sizes, args.repeats,
                                       log=lambda msg: print(msg, file=sys.stderr))
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    print(f"data: {args.data} ({args.data.stat().st_size:,} bytes), repeats: {args.repeats}")
    print(format_table(rows))
    if args.json:
        atomic_write_text(args.json, json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
