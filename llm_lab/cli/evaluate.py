"""``llm-lab eval PACKAGE --data FILE``: loss, perplexity and bits per byte on a held-out text."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llm_lab.cli.sample import add_dtype_argument, decode_model, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="loss, perplexity and bits per byte of a package on a text file")
    parser.add_argument("package", metavar="PACKAGE", help="a package directory (or a run directory)")
    parser.add_argument("--data", required=True, metavar="FILE", help="UTF-8 text file to evaluate on")
    parser.add_argument("--checkpoint", choices=("best", "last"), default=None, help="weights to use")
    parser.add_argument("--context-length", type=positive_int, default=None, help="window (default: the model's)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="windows per forward pass")
    parser.add_argument("--max-tokens", type=positive_int, default=None, help="evaluate only the first N tokens")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_dtype_argument(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    data = Path(args.data)
    if data.is_dir():
        raise ValueError(f"--data: not a file: {data} is a directory; give a UTF-8 text file")
    if not data.is_file():
        raise FileNotFoundError(f"--data: no such file: {data}")
    try:
        text = data.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--data {data}: not UTF-8 text ({e.reason} at byte {e.start})") from None

    from llm_lab.core.evaluation import evaluate_text
    from llm_lab.core.package.io import load_package_or_run

    _, tokenizer, model = load_package_or_run(args.package, checkpoint=args.checkpoint, device=args.device)
    result = evaluate_text(
        decode_model(model, args.dtype),
        tokenizer,
        text,
        context_length=args.context_length,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"loss           {result.loss:.4f} nats/token")
        print(f"perplexity     {result.perplexity:.3f}")
        print(f"bits per byte  {result.bits_per_byte:.4f}")
        print(f"evaluated      {result.tokens:,} tokens, {result.bytes:,} bytes of {data}")
    return 0
