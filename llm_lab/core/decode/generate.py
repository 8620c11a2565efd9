"""KV-cached autoregressive generation: :func:`generate`, :func:`stream` and :func:`generate_text`.

How a call runs:

1. The prompts are validated and left-padded into one ``(B, P)`` batch with an attention mask (1 real, 0 pad).
2. One static :class:`~llm_lab.core.model.kv_cache.KVCache` is allocated for ``P + max_new_tokens - 1``
   positions (capped at ``config.max_positions``): the last new token is never fed back, so it needs no slot.
3. Prefill: one forward pass over the whole prompt fills the cache and gives the first next-token logits (the
   output head runs for the last position only: ``logits_to_keep=1``).
4. Decode: one forward pass per new token, feeding only that token; the cache is written in place and nothing
   of the prefix is recomputed. Each step applies the logits processors (``processors.py``) and picks a token.

Speed on a CPU. A generation of enough new tokens first makes a decode copy of the model
(:func:`~llm_lab.core.decode.fast_linear.prepare_for_decode`: weights laid out for matrix-vector products, q/k/v
and gate/up fused; :func:`~llm_lab.core.decode.fast_linear.pays_to_prepare` says when) and runs steps 3-4 through
it. The copy is made per call, so a call always decodes the model's current weights, also between training steps.
A model that is already such a copy is used as it is: prepare once to decode many times with fixed weights.

Batches. Rows stop independently: once a row has produced an end token (or hit a stop string) it is
*finished*; it still rides along in the batched forward pass (its logits are computed and discarded), but no
token is sampled for it any more: its later positions hold ``pad_token_id``. The loop ends when every row is
finished or ``max_new_tokens`` is reached.

Context overflow (``on_overflow``). ``W = config.max_positions`` positions fit in the model. A prompt of
``P`` (padded) tokens can get ``W - P + 1`` new tokens without ever showing the model more than ``W``
positions. Beyond that:

* ``"slide"`` (the default for encodings that do not extrapolate, such as ``learned`` positions): every further
  step recomputes the logits from the last ``W`` tokens, uncached, with positions renumbered from 0 (nanoGPT's
  ``idx[:, -block_size:]``). A prompt longer than ``W`` is cut to its last ``W`` tokens the same way. Exact but
  slow (a full window per token).
* ``"stop"`` (the default for encodings whose class declares ``extrapolates``, such as RoPE or ALiBi, which run up
  to ``max_positions``, possibly beyond the training context): generation ends after ``W - P + 1`` tokens with
  finish reason ``"length"``.
* ``"error"``: a ``ValueError`` before anything runs if ``P + max_new_tokens - 1 > W``.

Log-probabilities (``logprobs=N``): each new token also gets a
:class:`~llm_lab.core.decode.logprobs.TokenLogprob`, its log-probability and the ``N`` most likely alternatives,
from ``log_softmax`` of the same raw logits it was picked from, *before* the repetition penalty, temperature and
the top-k/top-p/min-p filters (see :mod:`llm_lab.core.decode.logprobs`). Off by default: it costs a softmax and a
top-k per step.

Reproducibility: sampling draws only from ``generator`` (or a fresh one seeded with ``seed``), so the same
seed, prompts and settings give the same tokens. ``temperature=0`` is greedy and needs no randomness (so is any
temperature below ``MIN_SAMPLING_TEMPERATURE``, 1e-5; see ``processors.py``). Scores that are NaN or ``+inf``
(a model with NaN weights) end generation with a ``NonFiniteScoresError``, a ``ValueError``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from llm_lab.core.decode.decoder import OVERFLOW_POLICIES, Decoder, OverflowPolicy, default_overflow_policy
from llm_lab.core.decode.fast_linear import pays_to_prepare, prepare_for_decode
from llm_lab.core.decode.logprobs import TokenLogprob, check_top_n, to_token_logprobs
from llm_lab.core.decode.prompts import is_int, model_device, prepare_prompts
from llm_lab.core.decode.row_text import RowText
from llm_lab.core.decode.sampling import SamplingConfig
from llm_lab.utils.modules import eval_mode
from llm_lab.utils.seeds import check_seed
from llm_lab.utils.threads import AUTO, Threads, settle_threads

__all__ = [
    "FinishReason",
    "GenerationConfig",
    "GenerationOutput",
    "OverflowPolicy",
    "StreamChunk",
    "generate",
    "generate_text",
    "stream",
]

FinishReason = Literal["eos", "stop", "length"]


@dataclass
class GenerationOutput:
    """What :func:`generate` returns.

    Attributes:
        sequences: ``(B, P + n)`` int64 tensor on the model's device: the left-padded prompts (``P`` columns,
            padding as given or ``pad_token_id``), then the ``n`` decoding steps that ran. A row's end token is
            kept in place (like Hugging Face's ``generate``); every later position holds ``pad_token_id``.
        token_ids: per row, the new token ids, ending *before* the end token (which is not included). With a
            stop string, the tokens up to and including the one that completed it.
        texts: per row, the new text (``None`` without a tokenizer): the UTF-8 decoding of ``token_ids``
            (invalid bytes become U+FFFD), cut just before the first stop string.
        finish_reasons: per row, ``"eos"`` (end token), ``"stop"`` (stop string) or ``"length"``
            (``max_new_tokens`` or the context limit, see ``on_overflow``).
        prompt_lengths: per row, the number of real (unpadded) prompt tokens.
        logprobs: with ``logprobs=N``, per row one :class:`TokenLogprob` per entry of ``token_ids``; else None.
    """

    sequences: torch.Tensor
    token_ids: list[list[int]]
    texts: list[str] | None
    finish_reasons: list[str]
    prompt_lengths: list[int]
    logprobs: list[list[TokenLogprob]] | None = None


@dataclass(frozen=True)
class StreamChunk:
    """One item of :func:`stream`.

    Every new token of row ``row`` comes as a chunk with its ``token_id`` and the ``text`` that became safe to
    show with it (possibly ``""``: an incomplete UTF-8 character or a possible start of a stop string is held
    back). Each row ends with exactly one chunk whose ``token_id`` is ``None`` and whose ``finish_reason`` is
    set; its ``text`` flushes whatever was held back. So, per row, the ``token_id``s are
    :attr:`GenerationOutput.token_ids` and the ``text``s concatenate to :attr:`GenerationOutput.texts`.

    Attributes:
        row: index of the prompt in the batch.
        token_id: the new token, or ``None`` on the row's final chunk.
        text: text piece (always ``""`` without a tokenizer).
        finish_reason: ``None``, or on the final chunk ``"eos"``, ``"stop"`` or ``"length"``.
        logprob: with ``logprobs=N``, the new token's :class:`TokenLogprob` (None on the final chunk).
    """

    row: int
    token_id: int | None
    text: str
    finish_reason: str | None = None
    logprob: TokenLogprob | None = None


# ----------------------------------------------------------------------------------------------------------------
# Input checks


def _token_list(value: int | Sequence[int] | None, name: str, vocab_size: int) -> list[int]:
    if value is None:
        return []
    values = [value] if is_int(value) else value
    if not isinstance(values, Sequence) or not all(is_int(v) for v in values):
        raise ValueError(f"{name} must be an int or a list of ints, got {value!r}")
    for v in values:
        if not 0 <= v < vocab_size:
            raise ValueError(f"{name}={v} is outside the vocabulary [0, {vocab_size})")
    return list(values)


def _stop_list(stop: str | Sequence[str] | None, tokenizer: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if not all(isinstance(s, str) for s in stops):
        raise ValueError(f"stop must be a string or a list of strings, got {stop!r}")
    if any(s == "" for s in stops):
        raise ValueError("stop strings must not be empty")
    if stops and tokenizer is None:
        raise ValueError("stop strings are matched on decoded text: pass tokenizer= as well")
    return stops


# ----------------------------------------------------------------------------------------------------------------
# The settings of a call


@dataclass(frozen=True)
class GenerationConfig:
    """Every setting of a :func:`generate` or :func:`stream` call besides the model, the prompts and their mask and
    ``max_new_tokens``: declared here once, checked once, passed whole.

    Both functions take it as ``generation=`` and each of its fields (and each sampling setting) as a keyword:
    ``generate(model, ids, 20, temperature=0.8, seed=1)`` is ``generate(model, ids, 20,
    generation=GenerationConfig.from_kwargs(temperature=0.8, seed=1))``. The checks that need the model (ids inside
    its vocabulary, ``logprobs <= vocab_size``) run when the call starts.

    Attributes:
        sampling: the sampling settings as one :class:`~llm_lab.core.decode.sampling.SamplingConfig` (default: its
            defaults, temperature 1, no filters). As keywords (``temperature=0.8, top_k=50``; ``0`` is greedy): every
            registered processor's setting, see ``processors.py`` for each one's rule and the order they apply in.
        eos_token_id: end token id(s); a row finishes after producing one. ``None``: no end token.
        stop: stop string(s), matched on the decoded new text (needs ``tokenizer``); the text is cut before it.
        tokenizer: with ``decode_bytes(ids) -> bytes``; enables ``texts`` and ``stop``.
        generator: the random source for sampling (on the model's device).
        seed: build a fresh generator with this seed (instead of ``generator``).
        pad_token_id: fills positions after a row finished and pads list prompts; default the first end
            token, else 0.
        on_overflow: ``"slide"``, ``"stop"`` or ``"error"`` when the context is full (see the module docs);
            default ``"slide"`` for learned positions and ``"stop"`` otherwise.
        logprobs: report each new token's log-probability and this many most likely alternatives
            (``0 <= N <= vocab_size``) in ``GenerationOutput.logprobs``; the distribution is the model's raw one,
            before the penalty, temperature and filters (see the module docs). ``None``: not computed.
        threads: torch's CPU threads: ``"auto"`` (default, as ``llm-lab`` does: settled once per process, so a
            loop of calls measures nothing and an earlier setting is kept), a number, or ``None`` to leave the
            process setting alone; see :func:`~llm_lab.utils.threads.settle_threads`.

    Raises:
        ValueError: a setting outside its range (the message names it), stop strings without a tokenizer, both
            ``generator`` and ``seed``.
    """

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    eos_token_id: int | Sequence[int] | None = None
    stop: str | Sequence[str] | None = None
    tokenizer: Any = None
    generator: torch.Generator | None = None
    seed: int | None = None
    pad_token_id: int | None = None
    on_overflow: OverflowPolicy | None = None
    logprobs: int | None = None
    threads: Threads | None = AUTO

    def __post_init__(self) -> None:
        if not isinstance(self.sampling, SamplingConfig):
            raise ValueError(f"sampling must be a SamplingConfig, got {type(self.sampling).__name__}")
        if self.on_overflow is not None and self.on_overflow not in OVERFLOW_POLICIES:
            raise ValueError(
                f"on_overflow={self.on_overflow!r} is not supported; choose one of: {', '.join(OVERFLOW_POLICIES)}"
            )
        if self.generator is not None and self.seed is not None:
            raise ValueError("pass either generator= or seed=, not both")
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(self.generator).__name__}")
        if self.seed is not None:
            check_seed(self.seed)
        _stop_list(self.stop, self.tokenizer)

    @classmethod
    def from_kwargs(cls, base: GenerationConfig | None = None, **options: Any) -> GenerationConfig:
        """``base`` (default: the defaults) with ``options`` replacing some of its settings.

        ``options`` are this class's fields and the sampling settings (``temperature=0.8``), which replace those
        of ``sampling`` (given here, else ``base``'s). A name that is neither is a ``TypeError`` listing the
        sampling settings.
        """
        if base is not None and not isinstance(base, GenerationConfig):
            raise ValueError(f"generation must be a GenerationConfig, got {type(base).__name__}")
        base = base if base is not None else cls()
        own = {name: options.pop(name) for name in _FIELDS if name in options}
        sampling = own.pop("sampling", None)
        if sampling is not None and not isinstance(sampling, SamplingConfig):
            raise ValueError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
        own["sampling"] = SamplingConfig.from_kwargs(sampling if sampling is not None else base.sampling, **options)
        return dataclasses.replace(base, **own)


_FIELDS = tuple(f.name for f in dataclasses.fields(GenerationConfig))


# ----------------------------------------------------------------------------------------------------------------
# Public entry points


@dataclass(frozen=True)
class _Call:
    """One validated call of :func:`generate` or :func:`stream`: the decoder, and what turning its tokens into
    results needs."""

    decoder: Decoder
    prompt_lengths: list[int]
    stops: list[str]
    eos_ids: frozenset[int]
    tokenizer: Any


def _setup(
    model: nn.Module,
    input_ids: Any,
    max_new_tokens: int,
    attention_mask: torch.Tensor | None,
    generation: GenerationConfig | None,
    options: dict[str, Any],
) -> _Call:
    settings = GenerationConfig.from_kwargs(generation, **options)
    settle_threads(settings.threads)
    if not hasattr(model, "config"):
        raise ValueError("model must be a MiniGPT (or expose .config like one)")
    config = model.config
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    on_overflow = settings.on_overflow if settings.on_overflow is not None else default_overflow_policy(config)
    eos_ids = _token_list(settings.eos_token_id, "eos_token_id", config.vocab_size)
    pad_token_id = settings.pad_token_id
    if pad_token_id is None:
        pad_token_id = eos_ids[0] if eos_ids else 0
    _token_list(pad_token_id, "pad_token_id", config.vocab_size)
    stops = _stop_list(settings.stop, settings.tokenizer)
    if settings.logprobs is not None:
        check_top_n(settings.logprobs, config.vocab_size)
    device = model_device(model)
    ids, mask, lengths = prepare_prompts(input_ids, attention_mask, pad_token_id, config.vocab_size, device)
    generator = settings.generator
    if settings.seed is not None:
        generator = torch.Generator(device=device).manual_seed(settings.seed)
    if pays_to_prepare(model, new_tokens=max_new_tokens):
        model = prepare_for_decode(model)  # a snapshot of the current weights, for this call only
    decoder = Decoder(
        model,
        ids,
        mask,
        max_new_tokens,
        sampling=settings.sampling,
        eos_ids=eos_ids,
        pad_token_id=pad_token_id,
        generator=generator,
        on_overflow=on_overflow,
        can_stop=bool(stops),
        logprobs=settings.logprobs,
    )
    return _Call(decoder, lengths, stops, frozenset(eos_ids), settings.tokenizer)


def _chunks(call: _Call) -> Iterator[StreamChunk]:
    """Per-row chunks, one step at a time (the shared engine of :func:`stream` and stop-string ``generate``)."""
    decoder, tokenizer, stops, eos_ids = call.decoder, call.tokenizer, call.stops, call.eos_ids
    B = decoder.tokens.shape[0]
    texts = [RowText(tokenizer, stops) for _ in range(B)] if tokenizer is not None else None
    active = list(range(B))
    while active and decoder.steps < decoder.max_steps:
        with torch.inference_mode():
            new = decoder.step().tolist()
        last_step = decoder.steps == decoder.max_steps
        scored = None if decoder.last_logprobs is None else [t.tolist() for t in decoder.last_logprobs]
        still = []
        for r in active:
            token = new[r]
            if token in eos_ids:
                yield StreamChunk(r, None, texts[r].finish() if texts else "", "eos")
                continue
            piece, hit = texts[r].add(token) if texts else ("", False)
            logprob = None
            if scored is not None:
                logprob = to_token_logprobs([token], *(column[r : r + 1] for column in scored))[0]
            yield StreamChunk(r, token, piece, logprob=logprob)
            if hit:
                decoder.mark_finished(r)
                yield StreamChunk(r, None, "", "stop")
            elif last_step:
                yield StreamChunk(r, None, texts[r].finish() if texts else "", "length")
            else:
                still.append(r)
        active = still
    # max_new_tokens == 0 (or a prompt that already fills the context under "stop"): every row ends at once.
    for r in active:
        yield StreamChunk(r, None, texts[r].finish() if texts else "", "length")


def generate(
    model: nn.Module,
    input_ids: torch.Tensor | Sequence[int] | Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    attention_mask: torch.Tensor | None = None,
    generation: GenerationConfig | None = None,
    **options: Any,
) -> GenerationOutput:
    """Generate up to ``max_new_tokens`` tokens per prompt with a KV cache (prefill once, then one token a step).

    Args:
        model: a ``MiniGPT`` (anything with ``.config`` and the model's forward contract). It is switched to
            eval mode for the call and restored afterwards. On a CPU, a call of at least 64 new tokens decodes
            through a fresh :func:`~llm_lab.core.decode.fast_linear.prepare_for_decode` copy of it (the same
            tokens, faster); a model that is such a copy already is used as it is.
        input_ids: one prompt (``list[int]`` or a 1-D tensor), several prompts of any lengths
            (``list[list[int]]``: left-padded here with ``pad_token_id``), or a ``(B, P)`` tensor, left-padded
            when ``attention_mask`` is given.
        max_new_tokens: most new tokens per row (``>= 0``).
        attention_mask: ``(B, P)`` 0/1 mask for a tensor ``input_ids``: zeros then ones in each row (left
            padding).
        generation: the call's settings as one :class:`GenerationConfig` (default: its defaults).
        **options: the same settings as keywords, replacing those of ``generation``: each field of
            :class:`GenerationConfig` (``seed=1``, ``stop="\\n"``, ``tokenizer=tok``, ...) and every sampling setting
            (``temperature=0.8, top_k=50``; ``0`` is greedy).

    Returns:
        A :class:`GenerationOutput` (``sequences``, ``token_ids``, ``texts``, ``finish_reasons``,
        ``prompt_lengths``, ``logprobs``).

    Raises:
        ValueError: an empty prompt, ``max_new_tokens < 0``, a sampling setting outside its range (the message
            names it, see :class:`~llm_lab.core.decode.sampling.SamplingConfig`), ids outside the vocabulary, a
            mask that does not match the ids or is not left padding, stop strings without a tokenizer, or an
            overflow with ``on_overflow="error"``.
        TypeError: an unknown keyword (a misspelled sampling setting is named, with the known ones).
    """
    call = _setup(model, input_ids, max_new_tokens, attention_mask, generation, options)
    decoder, eos_ids = call.decoder, call.eos_ids
    B = len(call.prompt_lengths)
    with eval_mode(model):
        if call.stops:
            token_ids: list[list[int]] = [[] for _ in range(B)]
            pieces: list[list[str]] = [[] for _ in range(B)]
            reasons: list[str] = [""] * B
            scored: list[list[TokenLogprob]] = [[] for _ in range(B)]
            for chunk in _chunks(call):
                if chunk.token_id is not None:
                    token_ids[chunk.row].append(chunk.token_id)
                if chunk.logprob is not None:
                    scored[chunk.row].append(chunk.logprob)
                pieces[chunk.row].append(chunk.text)
                if chunk.finish_reason is not None:
                    reasons[chunk.row] = chunk.finish_reason
            texts: list[str] | None = ["".join(p) for p in pieces]
        else:
            # The fast path: no per-step host work except one "all finished?" check when there is an end token.
            steps_scored = []
            with torch.inference_mode():
                while decoder.steps < decoder.max_steps:
                    decoder.step()
                    if decoder.last_logprobs is not None:
                        steps_scored.append(decoder.last_logprobs)
                    if decoder.eos is not None and bool(decoder.finished.all()):
                        break
            new = decoder.tokens[:, decoder.prompt_len : decoder.length].tolist()
            token_ids, reasons = [], []
            for row in new:
                end = next((i for i, t in enumerate(row) if t in eos_ids), None)
                token_ids.append(row if end is None else row[:end])
                reasons.append("length" if end is None else "eos")
            scored = _stack_logprobs(steps_scored, token_ids, B) if decoder.logprobs is not None else []
            texts = None
            if call.tokenizer is not None:
                texts = [call.tokenizer.decode_bytes(ids).decode("utf-8", errors="replace") for ids in token_ids]
    sequences = decoder.tokens[:, : decoder.length].clone()
    return GenerationOutput(
        sequences, token_ids, texts, reasons, call.prompt_lengths, scored if decoder.logprobs is not None else None
    )


def _stack_logprobs(
    steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], token_ids: list[list[int]], batch: int
) -> list[list[TokenLogprob]]:
    """Per-step ``(B,)``/``(B, N)`` tensors -> per row, one :class:`TokenLogprob` per kept token (one copy to host)."""
    if not steps:
        return [[] for _ in range(batch)]
    chosen = torch.stack([s[0] for s in steps], dim=1).tolist()  # (B, steps)
    top_ids = torch.stack([s[1] for s in steps], dim=1).tolist()  # (B, steps, N)
    top_lps = torch.stack([s[2] for s in steps], dim=1).tolist()  # (B, steps, N)
    return [
        to_token_logprobs(ids, chosen[r][: len(ids)], top_ids[r][: len(ids)], top_lps[r][: len(ids)])
        for r, ids in enumerate(token_ids)
    ]


def stream(
    model: nn.Module,
    input_ids: torch.Tensor | Sequence[int] | Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    attention_mask: torch.Tensor | None = None,
    generation: GenerationConfig | None = None,
    **options: Any,
) -> Iterator[StreamChunk]:
    """Like :func:`generate`, but yield :class:`StreamChunk` items as tokens are produced.

    Arguments are those of :func:`generate` and are validated when ``stream`` is called (not on the first
    ``next``). For each decoding step, rows still running yield one chunk each, in row order; a row's last
    chunk has ``token_id=None`` and its ``finish_reason``. With a tokenizer, text pieces never split a
    multi-byte UTF-8 character (bytes are reassembled with an incremental decoder) and never show any part of
    a stop string. The model stays in eval mode until the iterator is exhausted or closed; the caller's code
    between items does not run under ``torch.inference_mode``.

    Example::

        for chunk in stream(model, tok.encode("Hello"), 50, tokenizer=tok, eos_token_id=tok.eot_token_id):
            print(chunk.text, end="", flush=True)
    """
    call = _setup(model, input_ids, max_new_tokens, attention_mask, generation, options)

    def run() -> Iterator[StreamChunk]:
        with eval_mode(model):
            yield from _chunks(call)

    return run()


def generate_text(
    model: nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[str],
    max_new_tokens: int = 100,
    *,
    stop_at_eot: bool = True,
    **kwargs: Any,
) -> str | list[str]:
    """Encode ``prompt`` (one string or a list), generate, and return only the new text.

    Args:
        model: a ``MiniGPT``.
        tokenizer: a lab tokenizer (``encode``, ``decode_bytes``, ``eot_token_id``).
        prompt: one prompt or a list of prompts (batched, left-padded).
        max_new_tokens: most new tokens per prompt.
        stop_at_eot: end a row at the tokenizer's end-of-text token (when it has one) unless ``eos_token_id``
            is passed explicitly.
        **kwargs: any other :func:`generate` keyword (``temperature``, ``top_k``, ``stop``, ``seed``, ...).

    Returns:
        The new text: a ``str`` for a ``str`` prompt, else a list in prompt order. For finish reasons and
        token ids call :func:`generate` with ``tokenizer=`` instead.
    """
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompt must be a string or a non-empty list of strings")
    encoded = [tokenizer.encode(p) for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"empty prompt: prompt {i} encodes to no tokens; give some text")
    if stop_at_eot and "eos_token_id" not in kwargs and getattr(tokenizer, "eot_token_id", None) is not None:
        kwargs["eos_token_id"] = tokenizer.eot_token_id
    out = generate(model, encoded, max_new_tokens, tokenizer=tokenizer, **kwargs)
    assert out.texts is not None  # a tokenizer was given
    return out.texts[0] if single else out.texts
