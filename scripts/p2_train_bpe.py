"""Train a byte-level BPE tokenizer, build language-modelling datasets, train a small MiniGPT, save a package.

    python scripts/p2_train_bpe.py --data data/tiny_shakespeare.txt --out artifacts/p2_bpe
    python scripts/p2_sample_bpe.py artifacts/p2_bpe --prompt "ROMEO:" --seed 0

The defaults are tiny (a 2-layer model, 200 steps) so the whole pipeline runs in well under a minute on a CPU;
every size is an argument. Each step is one library call:

1. ``prepare_run``: train a ``SubwordTokenizer`` on the training part of ``--data`` (the last ``--val-fraction``
   is held out), encode the text, build the ``LanguageModelingDataset`` windows and the ``MiniGPT``;
2. ``PreparedRun.start().train()``: the ``Trainer`` writes ``RUN_DIR`` (run.json, tokenizer/, metrics.csv,
   checkpoints/);
3. ``package_run``: the run becomes a package at ``--out`` (best-validation weights in ``model.safetensors``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llm_lab.cli import USER_ERRORS, report_user_error
from llm_lab.cli.sample import seed_int
from llm_lab.cli.threads import add_threads_argument, apply_threads_option
from llm_lab.core.data.download import default_corpus_path
from llm_lab.core.decode import generate_text
from llm_lab.core.model.config import POS_ENCODINGS
from llm_lab.core.model.gpt import MiniGPTConfig
from llm_lab.core.package.io import load_model_package, package_run
from llm_lab.core.train import TrainerConfig
from llm_lab.core.train.run import DataConfig, RunConfig, TokenizerSpec, prepare_run
from llm_lab.utils.words import plural

REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", type=Path, default=None,
        help="UTF-8 text (default: tiny Shakespeare, found as `default_corpus_path` says: your data/ first)",
    )
    p.add_argument("--out", type=Path, default=Path("artifacts/p2_bpe"), help="package to write (default: %(default)s)")
    p.add_argument("--run-dir", type=Path, default=None, help="run directory (default: experiments/<name of --out>)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run and package at these paths")
    p.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary: 256 bytes + merges + <|endoftext|>")
    p.add_argument("--val-fraction", type=float, default=0.1, help="last fraction of the text held out")
    p.add_argument("--context-length", type=int, default=64)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=64)
    p.add_argument("--pos-encoding", default="learned", help=f"one of: {', '.join(POS_ENCODINGS)}")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--eval-interval", type=int, default=50)
    p.add_argument("--eval-batches", type=int, default=10)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--seed", type=seed_int, default=1337)
    p.add_argument("--sample-tokens", type=int, default=60, help="tokens of the sample printed at the end (0: none)")
    add_threads_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = args.run_dir or Path("experiments") / args.out.name
    args.data = args.data or default_corpus_path(REPO)
    try:
        apply_threads_option(args.threads)
        if not args.data.is_file():
            raise FileNotFoundError(
                f"--data {args.data} not found; get the default corpus with `llm-lab data download tiny_shakespeare` "
                "or pass any UTF-8 text file"
            )
        config = RunConfig(
            model=MiniGPTConfig(
                vocab_size=args.vocab_size,  # replaced by the trained tokenizer's size
                context_length=args.context_length,
                n_layer=args.n_layer,
                n_head=args.n_head,
                n_embd=args.n_embd,
                pos_encoding=args.pos_encoding,
                dropout=args.dropout,
            ),
            train=TrainerConfig(
                batch_size=args.batch_size,
                max_steps=args.max_steps,
                lr=args.lr,
                min_lr=args.lr / 10,
                warmup_steps=min(args.warmup_steps, args.max_steps),
                eval_interval=args.eval_interval,
                eval_batches=args.eval_batches,
                log_interval=args.eval_interval,
                device=args.device,
                seed=args.seed,
            ),
            tokenizer=TokenizerSpec(type="bpe", vocab_size=args.vocab_size),
            data=DataConfig(val_fraction=args.val_fraction),
        )
        # Check the package path before training, so a long run is never lost to a path mistake at the end.
        if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
            raise FileExistsError(f"--out {args.out} already exists; pass --overwrite to replace it")
        prepared = prepare_run(config, args.data, run_dir, overwrite=args.overwrite)
        print(
            f"tokenizer: {prepared.tokenizer.vocab_size} tokens; {len(prepared.train_data):,} training windows; "
            f"model: {prepared.model.num_parameters():,} parameters"
        )
        result = prepared.start(progress=False).train()
        package = package_run(run_dir, args.out, overwrite=args.overwrite)
        best = f"{result.best_val_loss:.4f}" if result.best_val_loss is not None else "n/a"
        print(f"trained {plural(result.step, 'step')} ({result.tokens_seen:,} tokens), best val loss {best}")
        print(f"run: {run_dir}\npackage: {package}")
        if args.sample_tokens > 0:
            _, tokenizer, model = load_model_package(package)
            text = generate_text(model, tokenizer, "\n", args.sample_tokens, temperature=0.8, top_k=50, seed=args.seed)
            print(f"sample:\n{text}")
    except USER_ERRORS as e:
        return report_user_error("p2_train_bpe", e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
