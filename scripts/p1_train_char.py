"""Hello-world training: a tiny character-level MiniGPT on a short built-in text, then a sample.

    python scripts/p1_train_char.py                  # `make demo`; about 20 s on two CPU cores
    python scripts/p1_train_char.py --out runs/hello --max-steps 500

The whole run is three library calls: ``prepare_run`` (tokenizer, datasets, model), ``PreparedRun.start``
(writes the run directory, returns the ``Trainer``) and ``Trainer.train``. The sample at the end comes from the
same ``generate_text`` API that ``llm-lab sample`` uses. Without ``--out`` the run lives in a temporary directory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from llm_lab.cli import USER_ERRORS, report_user_error
from llm_lab.cli.sample import seed_int
from llm_lab.cli.threads import add_threads_argument, apply_threads_option
from llm_lab.core.decode import generate_text
from llm_lab.core.model.gpt import MiniGPTConfig
from llm_lab.core.train import TrainerConfig
from llm_lab.core.train.run import RunConfig, TokenizerSpec, prepare_run
from llm_lab.utils.words import plural

# A short original text; a character model memorises its spelling and rhythm within a few hundred steps.
BUILT_IN_TEXT = """\
The lamp in the window burned all night, and the baker saw it when he rose.
He said to the miller: the scholar is awake again, counting the stars.
The miller laughed and said: the scholar counts, and we bake the bread.
In the morning the scholar came down with ink on his hands and no hat.
He bought two loaves and said: the stars are still where they were.
The baker said: so is the bread, and so are we, good morning to you.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary directory)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--repeats", type=int, default=30, help="copies of the built-in text in the corpus")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--context-length", type=int, default=64)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-interval", type=int, default=50)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--seed", type=seed_int, default=1337)
    p.add_argument("--sample-tokens", type=int, default=200, help="characters sampled at the end (0: none)")
    p.add_argument("--prompt", default="The ", help="start of the sample")
    add_threads_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llm-lab-demo-") as tmp:
        corpus = Path(tmp) / "built_in.txt"
        corpus.write_text(BUILT_IN_TEXT * args.repeats, encoding="utf-8")
        out = args.out or Path(tmp) / "run"
        # Bad flags (a config ValueError) or an absent device: one line and exit 2, no traceback.
        try:
            apply_threads_option(args.threads)
            config = RunConfig(
                model=MiniGPTConfig(
                    context_length=args.context_length, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd
                ),
                train=TrainerConfig(
                    batch_size=args.batch_size,
                    max_steps=args.max_steps,
                    lr=args.lr,
                    min_lr=args.lr / 10,
                    warmup_steps=min(20, args.max_steps),
                    eval_interval=args.eval_interval,
                    eval_batches=4,
                    log_interval=args.eval_interval,
                    device=args.device,
                    seed=args.seed,
                ),
                tokenizer=TokenizerSpec(type="char"),
            )
            prepared = prepare_run(config, corpus, out, overwrite=args.overwrite)
            trainer = prepared.start(progress=False)
        except USER_ERRORS as e:
            return report_user_error("p1_train_char", e)
        print(
            f"{prepared.model.num_parameters():,} parameters, vocabulary of {prepared.tokenizer.vocab_size} characters"
        )
        before = trainer.evaluate().loss
        result = trainer.train()
        print(f"validation loss {before:.3f} -> {result.val_loss:.3f} after {plural(result.step, 'step')}")
        if args.sample_tokens > 0:
            text = generate_text(
                trainer.model, prepared.tokenizer, args.prompt, args.sample_tokens, temperature=0.8, seed=args.seed
            )
            print(f"sample:\n{args.prompt}{text}")
        if args.out is not None:
            print(f"run directory: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
