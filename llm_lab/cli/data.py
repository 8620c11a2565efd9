"""``llm-lab data prepare`` and ``llm-lab data download``: thin wrappers over ``llm_lab.core.data``."""

from __future__ import annotations

import argparse
from pathlib import Path

# Standard library only: the corpus names are needed to build --help. numpy/torch load inside the commands.
from llm_lab.core.data.download import DATASETS, DownloadError, download_dataset


def _load_tokenizer(spec: str, inputs: list[Path]):
    if spec == "char":
        from llm_lab.core.data.prepare import build_char_tokenizer

        return build_char_tokenizer(inputs)
    from llm_lab.core.tokenization import load_tokenizer

    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"--tokenizer must be 'char' or a saved tokenizer directory; not found: {path}")
    return load_tokenizer(path)


def _prepare(args: argparse.Namespace) -> int:
    inputs = [Path(p) for p in args.input]
    for path in inputs:
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
    from llm_lab.core.data.prepare import check_replaceable_corpus, prepare_corpus

    check_replaceable_corpus(args.out, args.overwrite)  # before reading the inputs for a vocabulary
    tokenizer = _load_tokenizer(args.tokenizer, inputs)
    meta = prepare_corpus(
        tokenizer,
        inputs,
        args.out,
        val_fraction=args.val_fraction,
        context_length=args.context_length,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(
        f"wrote {args.out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
        f"({meta['dtype']}, vocab {meta['vocab_size']:,}, tokenizer {meta['tokenizer']['type']})"
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
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="prepare and download corpora")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    prepare = sub.add_parser(
        "prepare",
        help="tokenise text files into train.bin/val.bin + meta.json",
        description="Tokenise text files (one document each) into OUT/train.bin and OUT/val.bin, with meta.json and "
        "the tokenizer in OUT/tokenizer. Validation is the last --val-fraction of the token stream.",
    )
    prepare.add_argument(
        "--tokenizer", required=True, help="'char' (built from the input text) or a saved tokenizer directory"
    )
    prepare.add_argument("--input", nargs="+", required=True, metavar="FILE", help="UTF-8 text files, in order")
    prepare.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    prepare.add_argument("--val-fraction", type=float, default=0.1, help="share of tokens for validation (default 0.1)")
    prepare.add_argument(
        "--context-length", type=int, default=None, help="warn if the validation split has no window this long"
    )
    prepare.add_argument("--overwrite", action="store_true", help="replace a corpus already prepared in DIR")
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
