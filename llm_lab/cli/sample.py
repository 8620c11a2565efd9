"""``llm-lab sample PACKAGE_OR_RUN --prompt TEXT``: generate text from a package or a run directory."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampling flags shared by ``llm-lab sample`` and the sampling scripts."""
    parser.add_argument(
        "--prompt", default="", help="text to continue (default: start from the end-of-text token, if any)"
    )
    parser.add_argument("--max-new-tokens", type=positive_int, default=200, metavar="N")
    parser.add_argument("--temperature", type=float, default=1.0, metavar="T", help="0 is greedy (default: 1.0)")
    parser.add_argument("--top-k", type=positive_int, default=None, metavar="K")
    parser.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling, in (0, 1]")
    parser.add_argument("--min-p", type=float, default=None, metavar="M", help="in [0, 1]")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R", help="> 0; 1 disables it")
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="same seed, same text")
    parser.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop string (repeatable)")
    parser.add_argument("--num-samples", type=positive_int, default=1, metavar="N", help="samples (one batch)")
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sample", help="generate text from a package or a run directory")
    parser.add_argument("path", metavar="PACKAGE_OR_RUN", help="a package directory or a Trainer run directory")
    add_sampling_arguments(parser)
    parser.add_argument("--checkpoint", choices=("best", "last"), default=None, help="weights to use")
    parser.set_defaults(func=_run)


def check_sampling_arguments(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` for out-of-range sampling flags (before any slow model loading)."""
    from llm_lab.core.decode.processors import check_sampling_args

    check_sampling_args(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty)


def _header(i: int, n: int) -> str:
    return f"--- sample {i + 1}/{n} ---\n" if n > 1 else ""


def _run(args: argparse.Namespace) -> int:
    check_sampling_arguments(args)
    from llm_lab.core.package.io import load_package_or_run

    _, tokenizer, model = load_package_or_run(args.path, checkpoint=args.checkpoint, device=args.device)
    return sample_and_print(args, tokenizer, model)


def sample_and_print(args: argparse.Namespace, tokenizer: Any, model: Any) -> int:
    """Generate with the sampling flags in ``args`` (see :func:`add_sampling_arguments`) and print the texts.

    Each sample is printed as prompt + new text; with ``--num-samples`` above 1 each gets a header line.
    """
    check_sampling_arguments(args)
    from llm_lab.core.decode import generate, stream

    eot = tokenizer.eot_token_id
    prompt_ids = tokenizer.encode(args.prompt) if args.prompt else []
    if not prompt_ids:
        if eot is None:
            raise ValueError("--prompt is empty and this tokenizer has no end-of-text token to start from; give text")
        prompt_ids = [eot]
    prompt_text = args.prompt
    n = args.num_samples
    kwargs = dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        eos_token_id=eot,
        stop=args.stop,
        tokenizer=tokenizer,
        seed=args.seed,
    )
    batch = [prompt_ids] * n

    if not args.stream:
        out = generate(model, batch, args.max_new_tokens, **kwargs)
        for i, text in enumerate(out.texts or []):
            print(_header(i, n) + prompt_text + text)
        return 0

    # Stream: rows are generated together; show row 0 live and hold the others back until their turn, so the
    # tokens are those of the batched (non-streaming) call with the same seed.
    held: list[list[str]] = [[] for _ in range(n)]
    done = [False] * n
    current = 0
    sys.stdout.write(_header(0, n) + prompt_text)
    for chunk in stream(model, batch, args.max_new_tokens, **kwargs):
        if chunk.row == current:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
        else:
            held[chunk.row].append(chunk.text)
        if chunk.finish_reason is not None:
            done[chunk.row] = True
            while current < n and done[current]:
                sys.stdout.write("\n")
                current += 1
                if current < n:
                    sys.stdout.write(_header(current, n) + prompt_text + "".join(held[current]))
    sys.stdout.flush()
    return 0
