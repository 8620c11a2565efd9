"""``llm-lab data prepare``, ``download`` and ``synth``: thin wrappers over ``llm_lab.core.data`` and the tasks."""

from __future__ import annotations

import argparse
from pathlib import Path

# Standard library only: the corpus names are needed to build --help. numpy/torch load inside the commands.
from llm_lab.cli.chat import add_synth_parser
from llm_lab.cli.sample import positive_int
from llm_lab.core.data.download import DATASETS, DownloadError, download_dataset

ENCODER_NAMES = ("tiktoken", "llm-lab")  # llm_lab.core.data.encode.ENCODERS (not imported here: it loads numpy)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _load_tokenizer(spec: str, sources: list, progress: bool):
    if spec == "char":
        from llm_lab.core.data.prepare import build_char_tokenizer

        return build_char_tokenizer(sources, progress=progress)
    from llm_lab.core.tokenization import load_tokenizer

    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"--tokenizer must be 'char' or a saved tokenizer directory; not found: {path}")
    return load_tokenizer(path)


def _prepare(args: argparse.Namespace) -> int:
    from llm_lab.core.data.prepare import check_replaceable_corpus, prepare_corpus, usable_workers
    from llm_lab.core.data.sources import resolve_inputs

    sources = resolve_inputs(args.input, args.text_field, args.separator)
    check_replaceable_corpus(args.out, args.overwrite)  # before reading the inputs for a vocabulary
    tokenizer = _load_tokenizer(args.tokenizer, sources, progress=not args.quiet)
    meta = prepare_corpus(
        tokenizer,
        sources,
        args.out,
        val_fraction=args.val_fraction,
        context_length=args.context_length,
        overwrite=args.overwrite,
        progress=not args.quiet,
        text_field=args.text_field,
        workers=args.workers if args.workers is not None else usable_workers(),
        shard_tokens=args.shard_tokens,
        encoder=args.encoder,
    )
    shards = len(meta["splits"]["train"]) + len(meta["splits"]["val"])
    print(
        f"wrote {args.out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
        f"({meta['dtype']}, vocab {meta['vocab_size']:,}, tokenizer {meta['tokenizer']['type']}; "
        f"{_count(meta['documents'], 'document')}, {meta['empty_documents']:,} empty skipped"
        + (f"; {shards} shards" if args.shard_tokens else "")
        + ")"
    )
    return 0


def _download(args: argparse.Namespace) -> int:
    try:
        path = download_dataset(args.name, args.out, from_path=args.from_path, url=args.url, timeout=args.timeout)
    except DownloadError as e:
        # One line, and the way out for machines without internet: where the file is, and how to recognise it.
        spec = DATASETS[args.name]
        raise ValueError(
            f"{e}. Without network access, fetch {spec.url} elsewhere ({spec.size:,} bytes, sha256 {spec.sha256}), "
            "copy it here and pass --from PATH"
        ) from None
    print(f"{args.name}: {path} (sha256 verified)")
    separator = DATASETS[args.name].separator
    if separator:
        print(f"its documents are separated by {separator} lines: prepare it with --separator '{separator}'")
    return 0


#: The fewest ids per shard ``--shard-tokens`` takes. Each shard is a file, written, synced and listed in
#: ``meta.json``, and opened by every reader: below a thousand ids a shard costs more than it holds
#: (``--shard-tokens 1`` wrote 7040 files for a 7 kB text, in 46 s).
MIN_SHARD_TOKENS = 1024


def _shard_tokens(text: str) -> int:
    value = positive_int(text)
    if value < MIN_SHARD_TOKENS:
        raise argparse.ArgumentTypeError(
            f"at least {MIN_SHARD_TOKENS} ids per shard (each shard is a file written, synced and opened by every "
            f"reader), got {value}"
        )
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="prepare and download corpora")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    prepare = sub.add_parser(
        "prepare",
        help="tokenise documents (text, JSON lines, Parquet, datasets) into train.bin/val.bin + meta.json",
        description="Tokenise documents into OUT/train.bin and OUT/val.bin (or shards), with meta.json and the "
        "tokenizer in OUT/tokenizer. Inputs: .txt files (one document each), .jsonl/.json lines and .parquet (one "
        "document per record, --text-field), either text format compressed as .gz or .zst, a folder saved by "
        "datasets' save_to_disk, folders (every file inside, sorted by path) and globs (quoted; matches sorted, ** "
        "recursive). Documents are joined with the tokenizer's end-of-text token; empty ones are skipped and counted. "
        "Validation is the last --val-fraction of the token stream.",
    )
    prepare.add_argument(
        "--tokenizer", required=True, help="'char' (built from the input text) or a saved tokenizer directory"
    )
    prepare.add_argument(
        "--input", nargs="+", required=True, metavar="PATH", help="files, folders or globs, read in this order"
    )
    prepare.add_argument(
        "--text-field", default="text", metavar="FIELD", help="record field holding the text (default: text)"
    )
    prepare.add_argument(
        "--separator", default=None, metavar="TEXT",
        help="split text files into documents at TEXT (e.g. '<|endoftext|>' for TinyStories); default: a file is "
        "one document",
    )
    prepare.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    prepare.add_argument("--val-fraction", type=float, default=0.1, help="share of tokens for validation (default 0.1)")
    prepare.add_argument(
        "--context-length", type=int, default=None, help="warn if the validation split has no window this long"
    )
    prepare.add_argument("--overwrite", action="store_true", help="replace a corpus already prepared in DIR")
    prepare.add_argument(
        "--workers", type=positive_int, default=None, metavar="N",
        help="parallel encoders: threads with tiktoken, else processes (default: the usable CPU cores); the ids "
        "do not depend on it",
    )
    prepare.add_argument(
        "--shard-tokens", type=_shard_tokens, default=None, metavar="N",
        help=f"write train-00000.bin, ... and val-00000.bin, ... of at most N tokens each (default: one file each; "
        f"at least {MIN_SHARD_TOKENS})",
    )
    prepare.add_argument(
        "--encoder", choices=("auto", *ENCODER_NAMES), default="auto",
        help="auto (default): tiktoken where it gives the tokenizer's own ids, else the tokenizer's encode",
    )
    prepare.add_argument("--quiet", action="store_true", help="no progress bar")
    prepare.set_defaults(func=_prepare)

    download = sub.add_parser(
        "download",
        help="fetch a known corpus and check its sha256",
        description="Fetch a known corpus from its canonical URL (or copy a local file with --from) and check its "
        "size and sha256; a mismatch keeps nothing.",
    )
    download.add_argument("name", choices=sorted(DATASETS), help="corpus name")
    download.add_argument("--out", type=Path, default=Path("data"), metavar="DIR", help="directory (default data/)")
    download.add_argument(
        "--from", dest="from_path", type=Path, default=None, metavar="PATH", help="copy this local file instead"
    )
    download.add_argument("--url", default=None, help="fetch from this mirror instead (the hash is still checked)")
    download.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds (default 30)")
    download.set_defaults(func=_download)

    add_synth_parser(sub)
