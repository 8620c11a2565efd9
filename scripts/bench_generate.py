"""Decoding benchmark: KV-cached ``generate`` vs Hugging Face ``generate`` on the same converted weights.

    python scripts/bench_generate.py                 # 6 layers x 384, batch 1 and 8, 256 new tokens, context 64/1024
    python scripts/bench_generate.py --quick         # tiny settings, a few seconds (used by the tests)
    python scripts/bench_generate.py --repeats 7 --json out.json

Prints greedy tokens/s (ours, HF, ratio, whether both produced the same tokens) and the per-token decode time
at each context length. A thin wrapper over ``llm_lab.core.decode.benchmark`` (needs ``transformers``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from llm_lab.core.decode.benchmark import BenchSettings, format_report, run_benchmark
from llm_lab.utils.io import atomic_write_json


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,8; got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and few tokens (a smoke test)")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement (median reported)")
    parser.add_argument("--new-tokens", type=int, help="new tokens per throughput run (default 256)")
    parser.add_argument("--batch-sizes", type=_int_list, help="comma-separated batch sizes (default 1,8)")
    parser.add_argument(
        "--contexts", type=_int_list, help="comma-separated prompt lengths for per-token time (default 64,1024)"
    )
    parser.add_argument("--vocab-size", type=int, help="vocabulary size (default 50257, GPT-2's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for the run")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    chosen = {
        "device": args.device,
        "repeats": args.repeats,
        "new_tokens": args.new_tokens,
        "batch_sizes": args.batch_sizes,
        "contexts": args.contexts,
        "vocab_size": args.vocab_size,
    }
    base = BenchSettings.quick() if args.quick else BenchSettings()
    try:
        # dataclasses.replace validates the settings again: a bad value is one line, before any model is built.
        settings = dataclasses.replace(base, **{k: v for k, v in chosen.items() if v is not None})
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be a positive integer, got {args.threads}")
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    results = run_benchmark(settings)
    print(format_report(results))
    if args.json:
        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
