"""``llm-lab train``: argument parsing over :mod:`llm_lab.core.train.run`.

    llm-lab train --config FILE.json --data PATH --out RUN_DIR [--set section.key=value ...]
                  [--resume | --overwrite] [--init-from RUN_DIR|PACKAGE] [--package OUT]

Under ``torchrun --nproc_per_node=N -m llm_lab train ...`` the processes join one group and train with DDP
(or FSDP, ``--set train.distributed=fsdp``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_lab.cli.sample import positive_int
from llm_lab.utils.dirlock import lock_directory
from llm_lab.utils.words import plural

# torch and the trainer are imported inside the commands, so `llm-lab --help` starts fast.
if TYPE_CHECKING:
    import torch

    from llm_lab.core.train.run import InitSource

__all__ = ["load_init_source", "make_sample_callback", "register"]


def make_sample_callback(
    tokenizer: Any,
    prompt: str | None = None,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int = 0,
):
    """A sample callback for the Trainer: ``callback(model, step) -> text`` through ``generate_text``.

    The default prompt is a newline (or, where the tokenizer cannot encode one, its token 0); the same seed
    gives the same text for the same weights.
    """
    from llm_lab.core.decode import generate_text

    if prompt is None:
        prompt = "\n"
        try:
            if not tokenizer.encode(prompt):
                raise ValueError
        except (ValueError, KeyError):
            prompt = tokenizer.decode([0])

    def sample(model: torch.nn.Module, step: int) -> str:
        text = generate_text(model, tokenizer, prompt, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
        return prompt + text

    return sample


def load_init_source(path: str | Path) -> InitSource:
    """Weights, model config and tokenizer of a run directory (best checkpoint) or a model package."""
    from llm_lab.core.train.run import InitSource

    return InitSource.load(path)


def _train(args: argparse.Namespace) -> int:
    from llm_lab.cli import CLIError
    from llm_lab.core.train import NonFiniteLossError
    from llm_lab.core.train.distributed import init_distributed, shutdown_distributed
    from llm_lab.core.train.run import prepare_run
    from llm_lab.core.train.run_config import resolve_run_config

    if args.package is not None:
        # Checked before training, so a finished run never ends on a refusal.
        if args.package.exists() and not args.overwrite:
            raise CLIError(f"--package {args.package} already exists; choose another path or pass --overwrite")
        from llm_lab.core.package.layout import check_replaceable

        check_replaceable(args.package)  # --overwrite replaces only a package llm-lab wrote (and its files only)
    # An explicit --threads wins over train.threads in the config (and is recorded in run.json).
    overrides = [*args.overrides, f"train.threads={args.threads}"] if args.threads is not None else args.overrides
    config = resolve_run_config(args.config, args.out, overrides, resume=args.resume)
    dist_info = init_distributed(config.train.device)
    clean = False
    # One writer per run (llm_lab.utils.dirlock): held from the first check to the end; rank 0 writes the run.
    lock = contextlib.ExitStack()
    if dist_info.is_main:
        lock.enter_context(lock_directory(args.out))
    try:
        init_from = load_init_source(args.init_from).with_overrides(args.overrides) if args.init_from else None
        prepared = prepare_run(
            config, args.data, args.out, resume=args.resume, overwrite=args.overwrite, init_from=init_from
        )
        callbacks = []
        if prepared.config.train.sample_interval:
            callbacks.append(
                make_sample_callback(
                    prepared.tokenizer,
                    args.sample_prompt,
                    args.sample_tokens,
                    seed=prepared.config.train.seed,
                )
            )
        trainer = prepared.start(callbacks, progress=False if args.quiet else None)
        if dist_info.is_main:
            n_params = sum(p.numel() for p in prepared.model.parameters())
            what = f"resuming at step {trainer.step}" if args.resume else "training"
            print(
                f"{what}: {n_params:,} parameters, {trainer.precision} on {trainer.device}"
                f"{' x ' + plural(dist_info.world_size, 'process', 'processes') if dist_info.enabled else ''}, "
                f"{prepared.data_source['train_tokens']:,} train / {prepared.data_source['val_tokens']:,} val tokens"
            )
            if args.overwrite and Path(trainer.out_dir) != Path(args.out):
                # The replacement trains beside the old run (which stays whole until then): say where to look.
                print(f"until its first checkpoint the new run is written to {trainer.out_dir} (metrics.csv there), "
                      f"then it replaces {args.out}")  # fmt: skip
        try:
            result = trainer.train()
        except NonFiniteLossError as e:
            from llm_lab.core.train.checkpoint import run_checkpoint_path

            last = run_checkpoint_path(args.out, "last")
            kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written"
            raise CLIError(f"{e}; training stopped, {kept}. Lower train.lr or raise train.warmup_steps") from None
        if dist_info.is_main:
            best = f"{result.best_val_loss:.4f}" if result.best_val_loss is not None else "n/a"
            print(f"done: step {result.step}, {result.tokens_seen:,} tokens, best val loss {best}; run in {args.out}")
            if args.package is not None:
                from llm_lab.core.package.io import package_run

                print(f"package: {package_run(args.out, args.package, overwrite=args.overwrite)}")
        clean = True
    finally:
        lock.close()
        if dist_info.enabled:
            shutdown_distributed(clean=clean)
    if dist_info.enabled and not dist_info.is_main:
        # A worker that finished cleanly leaves without Python's teardown. Rank 0 hosts the process group's store
        # and may exit first; a worker's C++ teardown then aborted now and then ("terminate called without an
        # active exception", SIGABRT, seen on rank 1 only, in about one full slow-suite run in two) although the
        # run was done. Workers write no files (rank 0 writes the run), so there is nothing left to flush but stdio.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model from a run config",
        description="Train a MiniGPT from a run config (model/train/tokenizer sections). --data is a UTF-8 text "
        "file (tokenised with the config's tokenizer; the last 10% is validation) or a directory made by "
        "`llm-lab data prepare`. The run stops at train.max_steps and writes run.json, tokenizer/, metrics.csv and "
        "checkpoints/ under --out. SIGTERM (preemption) finishes the step, writes checkpoints/last.pt and exits with "
        "143; --resume continues exactly. One command at a time may write a run (RUN_DIR is locked).",
    )
    parser.add_argument("--config", type=Path, metavar="FILE.json", help="run config (optional with --resume)")
    parser.add_argument("--data", type=Path, required=True, metavar="PATH", help="text file or prepared directory")
    parser.add_argument(
        "--out", type=Path, required=True, metavar="RUN_DIR", help="run directory (not a symbolic link)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set train.max_steps=100 (repeatable)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from checkpoints/last.pt")
    mode.add_argument(
        "--overwrite", action="store_true", help="replace the run in RUN_DIR (kept until the new run's 1st checkpoint)"
    )
    parser.add_argument(
        "--init-from", metavar="PATH", help="fine-tune: start from the weights (and tokenizer) of a run or package"
    )
    parser.add_argument(
        "--package", type=Path, metavar="OUT", help="at the end, write a model package of the best weights to OUT"
    )
    parser.add_argument("--sample-prompt", default=None, help="prompt of the periodic samples (default: newline)")
    # Checked here, not at the first sample: a bad value must not cost the training steps before it.
    parser.add_argument("--sample-tokens", type=positive_int, default=200, help="tokens per sample (default 200)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no per-row log lines")
    parser.set_defaults(func=_train)
