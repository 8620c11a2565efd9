"""Sanity check of the training stack: a few steps of a tiny character model on a small slice of a corpus.

    python scripts/p1_train_char_sanity_check.py                     # tiny Shakespeare slice, ~50 steps
    python scripts/p1_train_char_sanity_check.py --data any.txt --chars 20000 --max-steps 30

Passes (exit 0) when the validation loss after training is clearly below the loss of the untrained model
(which sits near log(vocabulary size)); prints both, and a short sample. Exit 1 when the loss did not fall.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

from llm_lab.cli import USER_ERRORS, report_user_error
from llm_lab.cli.sample import seed_int
from llm_lab.cli.threads import add_threads_argument, apply_threads_option
from llm_lab.core.data.download import default_corpus_path
from llm_lab.core.decode import generate_text
from llm_lab.core.model.gpt import MiniGPTConfig
from llm_lab.core.train import TrainerConfig
from llm_lab.core.train.run import RunConfig, TokenizerSpec, prepare_run

REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="UTF-8 text (default: tiny Shakespeare)")
    p.add_argument("--chars", type=int, default=50_000, help="use only the first CHARS characters")
    p.add_argument("--max-steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--context-length", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--min-drop", type=float, default=0.3, help="required fall of the validation loss (nats)")
    add_threads_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data = args.data or default_corpus_path(REPO)
    if not data.is_file():
        print(
            f"p1_train_char_sanity_check: error: {data} not found; fetch it with "
            "`llm-lab data download tiny_shakespeare --out data/` or pass --data FILE",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="llm-lab-sanity-") as tmp:
        sliced = Path(tmp) / "slice.txt"
        # Bad flags (a config ValueError), a non-UTF-8 file or an absent device: one line and exit 2, no traceback.
        try:
            apply_threads_option(args.threads)
            try:
                text = data.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{data} is not UTF-8 text ({e.reason} at byte {e.start})") from None
            sliced.write_text(text[: args.chars], encoding="utf-8")
            config = RunConfig(
                model=MiniGPTConfig(context_length=args.context_length, n_layer=2, n_head=2, n_embd=32),
                train=TrainerConfig(
                    batch_size=args.batch_size,
                    max_steps=args.max_steps,
                    lr=3e-3,
                    min_lr=3e-4,
                    warmup_steps=min(5, args.max_steps),
                    eval_interval=args.max_steps,
                    eval_batches=5,
                    log_interval=max(1, args.max_steps // 5),
                    device=args.device,
                    seed=args.seed,
                ),
                tokenizer=TokenizerSpec(type="char"),
            )
            prepared = prepare_run(config, sliced, Path(tmp) / "run")
            trainer = prepared.start(progress=False)
        except USER_ERRORS as e:
            return report_user_error("p1_train_char_sanity_check", e)
        before = trainer.evaluate().loss
        after = trainer.train().val_loss
        vocab = prepared.tokenizer.vocab_size
        print(
            f"untrained val loss {before:.3f} (log(vocab) = {math.log(vocab):.3f}); "
            f"after {args.max_steps} steps: {after:.3f}"
        )
        print("sample:", repr(generate_text(trainer.model, prepared.tokenizer, "\n", 60, temperature=0.8, seed=0)))
    ok = after is not None and after < before - args.min_drop
    print("sanity check passed" if ok else f"sanity check FAILED: the loss fell by less than {args.min_drop}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
