"""``llm-lab sample PACKAGE_OR_RUN --prompt TEXT``: generate text from a package or a run directory."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

#: The most samples one ``llm-lab sample`` decodes (one batch): far past what a person reads, and a bound on the
#: batch's memory (``--num-samples 1000000000`` grew to 16 GB before it was killed).
MAX_NUM_SAMPLES = 1024


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def bounded_int(high: int, why: str, *, low: int = 1) -> Callable[[str], int]:
    """argparse type: an integer from ``low`` to ``high``. One value must not ask for unbounded time or memory, so
    every count flag (samples, repeats, rounds, sizes) has a cap; ``why`` says why it is where it is, in the message
    and in the docs (``docs/how-to/checks-and-limits.md``)."""

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high:,}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high:,} ({why}), got {value:,}")
        return value

    return count


def seed_int(text: str) -> int:
    """argparse type: a seed, an integer from 0 to 2**63 - 1 (:data:`llm_lab.utils.seeds.MAX_SEED`)."""
    from llm_lab.utils.seeds import check_seed

    try:
        return check_seed(int(text), "a seed")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**63 - 1, got {text!r}") from None


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    """``--dtype``: how the decode copy holds its weights (validated by the library, whose registry names them)."""
    parser.add_argument(
        "--dtype",
        default="fp32",
        metavar="DTYPE",
        help="weights to decode with: fp32 (default), bf16, int8 (weight-only, a scale per output channel) or auto "
        "(int8 on a CPU where an int8 kernel beats fp32, fp32 elsewhere); bf16 is slow on CPUs without bfloat16 units",
    )


def add_sampling_arguments(parser: argparse.ArgumentParser, *, on_first_use: bool = False) -> None:
    """The sampling flags shared by ``llm-lab sample`` and the sampling scripts.

    Args:
        parser: the parser to add them to.
        on_first_use: add the flags of the sampling settings only when ``parser`` first parses or prints its help.
            They come from the processor registry, which imports torch; ``llm-lab`` builds every subcommand's parser
            at start-up and must stay light (``llm-lab --help`` imports no torch).
    """
    parser.add_argument(
        "--prompt", default="", help="text to continue (default: start from the end-of-text token, if any)"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=200,
        metavar="N",
        help="most new tokens (default 200); at most what the model's context allows, or 100 windows of it for a "
        "model that slides its window",
    )
    if on_first_use:
        add_sampling_config_arguments_on_first_use(parser)
    else:
        add_sampling_config_arguments(parser)
    parser.add_argument("--seed", type=seed_int, default=None, metavar="S", help="same seed, same text")
    parser.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop string (repeatable)")
    parser.add_argument(
        "--num-samples",
        type=bounded_int(MAX_NUM_SAMPLES, "the samples are one batch, decoded together"),
        default=1,
        metavar="N",
        help=f"samples, decoded as one batch (default 1, at most {MAX_NUM_SAMPLES})",
    )
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")


def add_sampling_config_arguments_on_first_use(parser: argparse.ArgumentParser) -> None:
    """:func:`add_sampling_config_arguments`, deferred until ``parser`` first parses or prints its help (the registry
    imports torch, and ``llm-lab`` builds every subcommand's parser at start-up)."""
    parser.__class__ = type(f"Sampling{type(parser).__name__}", (_SamplingFlagsOnFirstUse, type(parser)), {})


class _SamplingFlagsOnFirstUse:
    """Parser mixin: add the sampling settings' flags (:func:`add_sampling_config_arguments`) on first use."""

    _sampling_flags_added = False

    def _add_sampling_flags(self) -> None:
        if not self._sampling_flags_added:
            self._sampling_flags_added = True
            add_sampling_config_arguments(self)  # type: ignore[arg-type]

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._add_sampling_flags()
        return super().parse_known_args(args, namespace)  # type: ignore[misc]

    def format_usage(self) -> str:
        self._add_sampling_flags()
        return super().format_usage()  # type: ignore[misc]

    def format_help(self) -> str:
        self._add_sampling_flags()
        return super().format_help()  # type: ignore[misc]


def add_sampling_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per registered sampling setting (``--temperature``, ``--top-k``, ...), from its ``SamplingParam``.

    Types and ranges come from the registry too: an integer setting whose range starts at 1 takes
    :func:`positive_int`, the others ``int`` or ``float``; ranges are checked by :func:`sampling_config_from_args`.
    """
    from llm_lab.core.decode.sampling import sampling_params

    for param in sampling_params():
        kind = (positive_int if param.low == 1 else int) if param.kind is int else float
        default = "off" if param.default is None else f"{param.default:g}"
        parser.add_argument(
            param.flag,
            dest=param.name,
            type=kind,
            default=param.default,
            help=f"{param.help}; {param.range_text()} (default: {default})",
        )


def sampling_config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~llm_lab.core.decode.sampling.SamplingConfig` of the sampling flags (``ValueError`` if out of
    range, before any slow model loading)."""
    from llm_lab.core.decode.sampling import SamplingConfig, sampling_params

    return SamplingConfig(**{param.name: getattr(args, param.name) for param in sampling_params()})


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sample", help="generate text from a package or a run directory")
    parser.add_argument("path", metavar="PACKAGE_OR_RUN", help="a package directory or a Trainer run directory")
    add_sampling_arguments(parser, on_first_use=True)
    parser.add_argument("--checkpoint", choices=("best", "last"), default=None, help="weights to use")
    add_dtype_argument(parser)
    parser.set_defaults(func=_run)


def check_sampling_arguments(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` for out-of-range sampling flags (before any slow model loading)."""
    sampling_config_from_args(args)


def _header(i: int, n: int) -> str:
    return f"--- sample {i + 1}/{n} ---\n" if n > 1 else ""


def _run(args: argparse.Namespace) -> int:
    check_sampling_arguments(args)
    from llm_lab.core.package.io import load_package_or_run

    _, tokenizer, model = load_package_or_run(args.path, checkpoint=args.checkpoint, device=args.device)
    from llm_lab.core.decode import model_in_dtype

    return sample_and_print(args, tokenizer, model_in_dtype(model, args.dtype))


def check_max_new_tokens(max_new_tokens: int, config: Any, prompt_length: int) -> None:
    """Raise ``ValueError`` when ``--max-new-tokens`` is more than the model can generate in one call."""
    from llm_lab.core.decode.decoder import default_overflow_policy
    from llm_lab.core.decode.limits import SLIDING_WINDOWS_LIMIT, new_tokens_limit

    limit = new_tokens_limit(config, prompt_length)
    if max_new_tokens <= limit:
        return
    window = config.max_positions
    if default_overflow_policy(config) == "slide":
        why = f"{SLIDING_WINDOWS_LIMIT} windows of its {window}-token context, sliding the window past it"
    else:
        why = f"its context is {window} tokens and the prompt takes {prompt_length}"
    raise ValueError(f"--max-new-tokens {max_new_tokens} is more than this model can generate: at most {limit} ({why})")


def check_batch_memory(config: Any, num_samples: int, positions: int, device: str) -> None:
    """Raise ``ValueError`` when ``num_samples`` sequences of ``positions`` tokens (the KV cache, one layer's work,
    the scores) cannot fit ``device``'s memory, before generating."""
    from llm_lab.core.model.memory import check_memory, estimate_memory

    seq_len = min(positions, config.max_positions)  # a sliding window never caches more than its context
    check_memory(
        estimate_memory(config, batch_size=num_samples, seq_len=seq_len),
        device,
        what=f"--num-samples {num_samples} x {seq_len} positions",
        hint="ask for fewer samples (--num-samples) or tokens (--max-new-tokens)",
    )


def sample_and_print(args: argparse.Namespace, tokenizer: Any, model: Any) -> int:
    """Generate with the sampling flags in ``args`` (see :func:`add_sampling_arguments`) and print the texts.

    Each sample is printed as prompt + new text; with ``--num-samples`` above 1 each gets a header line. Without
    ``--stream`` a progress bar counts the new tokens on stderr (in a terminal). Ctrl+C stops generating and
    prints what was generated so far (exit code 130).
    """
    sampling = sampling_config_from_args(args)
    from llm_lab.core.decode import stream

    eot = tokenizer.eot_token_id
    prompt_ids = tokenizer.encode(args.prompt) if args.prompt else []
    if not prompt_ids:
        if eot is None:
            raise ValueError("--prompt is empty and this tokenizer has no end-of-text token to start from; give text")
        prompt_ids = [eot]
    check_max_new_tokens(args.max_new_tokens, model.config, len(prompt_ids))
    n = args.num_samples
    check_batch_memory(model.config, n, len(prompt_ids) + args.max_new_tokens, args.device)
    chunks = stream(
        model,
        [prompt_ids] * n,
        args.max_new_tokens,
        sampling=sampling,
        eos_token_id=eot,
        stop=args.stop,
        tokenizer=tokenizer,
        seed=args.seed,
    )
    # The stream's pieces concatenate to generate()'s texts (same tokens, same seed), so printing them at the end
    # or live gives the text of the batched call either way.
    printer = _LivePrinter(args.prompt, n) if args.stream else _CollectingPrinter(args.prompt, n, args.max_new_tokens)
    try:
        for chunk in chunks:
            printer.add(chunk)
    except KeyboardInterrupt:
        chunks.close()
        printer.finish()
        print(f"llm-lab: interrupted after {printer.new_tokens} new tokens; the text so far is above", file=sys.stderr)
        return 130
    printer.finish()
    return 0


class _CollectingPrinter:
    """Keeps each sample's pieces and prints them all at the end, with a token progress bar meanwhile."""

    def __init__(self, prompt: str, n: int, max_new_tokens: int) -> None:
        from tqdm import tqdm

        self.prompt = prompt
        self.pieces: list[list[str]] = [[] for _ in range(n)]
        self.counts = [0] * n
        self.new_tokens = 0  # the longest sample so far, in tokens
        # disable=None: shown only on a terminal, so piped output and tests stay clean.
        self.progress = tqdm(total=max_new_tokens, unit="tok", desc="sampling", leave=False, disable=None)

    def add(self, chunk: Any) -> None:
        self.pieces[chunk.row].append(chunk.text)
        if chunk.token_id is not None:
            self.counts[chunk.row] += 1
            if self.counts[chunk.row] > self.new_tokens:
                self.new_tokens = self.counts[chunk.row]
                self.progress.update(1)

    def finish(self) -> None:
        self.progress.close()
        n = len(self.pieces)
        for i, pieces in enumerate(self.pieces):
            print(_header(i, n) + self.prompt + "".join(pieces))
        sys.stdout.flush()


class _LivePrinter:
    """Prints sample 0 as it is generated and holds the others back until their turn (they run in one batch)."""

    def __init__(self, prompt: str, n: int) -> None:
        self.prompt = prompt
        self.held: list[list[str]] = [[] for _ in range(n)]
        self.done = [False] * n
        self.current = 0
        self.counts = [0] * n
        sys.stdout.write(_header(0, n) + prompt)

    @property
    def new_tokens(self) -> int:
        return max(self.counts)

    def add(self, chunk: Any) -> None:
        n = len(self.held)
        if chunk.token_id is not None:
            self.counts[chunk.row] += 1
        if chunk.row == self.current:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
        else:
            self.held[chunk.row].append(chunk.text)
        if chunk.finish_reason is not None:
            self.done[chunk.row] = True
            while self.current < n and self.done[self.current]:
                sys.stdout.write("\n")
                self.current += 1
                if self.current < n:
                    sys.stdout.write(_header(self.current, n) + self.prompt + "".join(self.held[self.current]))

    def finish(self) -> None:
        """Close the sample being shown and print the held text of the later ones (all of it on an interrupt)."""
        n = len(self.held)
        if self.current < n:
            sys.stdout.write("\n")
            for i in range(self.current + 1, n):
                sys.stdout.write(_header(i, n) + self.prompt + "".join(self.held[i]) + "\n")
            self.current = n
        sys.stdout.flush()
