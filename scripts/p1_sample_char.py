"""Sample from a character-level training run: a run directory plus its vocabulary.

    python scripts/p1_train_char.py --out runs/hello
    python scripts/p1_sample_char.py runs/hello --prompt "The " --max-new-tokens 200 --seed 0
    python scripts/p1_sample_char.py RUN_DIR --vocab path/to/tokenizer   # a vocabulary saved elsewhere

``--vocab`` is a tokenizer directory (``tokenizer.save(DIR)``) or a character ``vocab.json`` (character -> id);
by default the run's own ``RUN_DIR/tokenizer``. A thin wrapper over ``load_run`` and ``llm_lab.core.decode``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llm_lab.cli import USER_ERRORS, report_user_error
from llm_lab.cli.sample import add_sampling_arguments, check_sampling_arguments, sample_and_print
from llm_lab.cli.threads import add_threads_argument, apply_threads_option
from llm_lab.core.package.io import load_run
from llm_lab.core.tokenization import CharTokenizer, load_tokenizer


def load_vocab(path: Path):
    """A tokenizer from a tokenizer directory or from a bare character ``vocab.json``."""
    if path.is_dir():
        return load_tokenizer(path)
    if not path.is_file():
        raise FileNotFoundError(f"--vocab: no such file or directory: {path}")
    if (path.parent / "tokenizer_config.json").is_file():
        return load_tokenizer(path.parent)
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--vocab {path}: not a JSON vocabulary ({e})") from None
    if not isinstance(vocab, dict):
        raise ValueError(f"--vocab {path}: expected a JSON object mapping characters to ids")
    return CharTokenizer(vocab)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="run directory, e.g. from `python scripts/p1_train_char.py --out runs/hello`")
    parser.add_argument(
        "--vocab", type=Path, default=None, help="tokenizer directory or vocab.json (default: the run's)"
    )
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best", help="weights to use")
    add_sampling_arguments(parser)
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    try:
        apply_threads_option(args.threads)
        check_sampling_arguments(args)
        tokenizer = load_vocab(args.vocab) if args.vocab is not None else None
        _, tokenizer, model = load_run(
            args.run_dir, checkpoint=args.checkpoint, device=args.device, tokenizer=tokenizer
        )
        if not args.prompt:
            args.prompt = "\n"  # a character model has no end-of-text token to start from
        return sample_and_print(args, tokenizer, model)
    except USER_ERRORS as e:
        return report_user_error("p1_sample_char", e)


if __name__ == "__main__":
    sys.exit(main())
