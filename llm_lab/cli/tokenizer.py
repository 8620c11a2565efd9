"""``llm-lab tokenizer train``: a thin wrapper over ``llm_lab.core.data.tokenizer_training``."""

from __future__ import annotations

import argparse
from pathlib import Path

from llm_lab.cli.sample import positive_int


def _train(args: argparse.Namespace) -> int:
    from llm_lab.core.data.prepare import usable_workers
    from llm_lab.core.data.tokenizer_training import train_tokenizer

    summary = train_tokenizer(
        args.input,
        args.vocab_size,
        args.out,
        text_field=args.text_field,
        separator=args.separator,
        pattern=args.pattern,
        special_tokens=args.special,
        overwrite=args.overwrite,
        progress=not args.quiet,
        workers=args.workers if args.workers is not None else usable_workers(),
    )
    short = (
        f"; stopped below {args.vocab_size:,}: no pair left that occurs twice"
        if summary["vocab_size"] < args.vocab_size
        else ""
    )
    print(
        f"wrote {args.out}: vocab {summary['vocab_size']:,} ({summary['merges']:,} merges, pattern "
        f"{summary['pattern']}{short}) from {summary['documents']:,} documents, {summary['bytes'] / 2**20:,.1f} MiB"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("tokenizer", help="train a BPE tokenizer on a corpus")
    sub = group.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)
    train = sub.add_parser(
        "train",
        help="train a byte-level BPE tokenizer (the folder data prepare --tokenizer reads)",
        description="Train a byte-level BPE tokenizer on documents from the same inputs as data prepare (.txt, "
        ".jsonl/.json lines, .parquet, .gz/.zst, datasets folders, folders and globs in sorted order), streaming "
        "with memory that grows with the distinct words, not the corpus. Writes vocab.json, merges.txt and "
        "tokenizer_config.json into --out.",
    )
    train.add_argument("--input", nargs="+", required=True, metavar="PATH", help="files, folders or globs, in order")
    train.add_argument("--text-field", default="text", metavar="FIELD", help="record field holding the text")
    train.add_argument("--separator", default=None, metavar="TEXT",
                       help="split text files into documents at TEXT (default: a file is one document)")
    train.add_argument("--vocab-size", type=positive_int, required=True, metavar="N",
                       help="ids in all: 256 bytes + merges + special tokens")
    train.add_argument("--out", type=Path, required=True, metavar="DIR", help="tokenizer folder to write")
    train.add_argument("--pattern", choices=("gpt2", "gpt4"), default="gpt2", help="pre-tokenisation (default gpt2)")
    train.add_argument("--special", nargs="*", default=["<|endoftext|>"], metavar="TOKEN",
                       help="special tokens (default: <|endoftext|>; give none for no special token)")
    train.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="processes that count the words (default: the usable CPU cores); the result does not "
                       "depend on it")
    train.add_argument("--overwrite", action="store_true", help="replace a tokenizer already in DIR")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=_train)
