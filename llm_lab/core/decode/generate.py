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

import codecs
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import nn

from llm_lab.core.decode.fast_linear import pays_to_prepare, prepare_for_decode
from llm_lab.core.decode.logprobs import TokenLogprob, check_top_n, step_logprobs, to_token_logprobs
from llm_lab.core.decode.processors import Sampler, check_next_token_scores
from llm_lab.core.decode.prompts import is_int, model_device, prepare_prompts
from llm_lab.core.decode.sampling import SamplingConfig
from llm_lab.utils.modules import eval_mode
from llm_lab.utils.seeds import check_seed
from llm_lab.utils.threads import AUTO, Threads, settle_threads

__all__ = [
    "FinishReason",
    "GenerationOutput",
    "OverflowPolicy",
    "StreamChunk",
    "generate",
    "generate_text",
    "stream",
]

FinishReason = Literal["eos", "stop", "length"]
OverflowPolicy = Literal["slide", "stop", "error"]
OVERFLOW_POLICIES: tuple[str, ...] = ("slide", "stop", "error")


class _ByteTokenizer(Protocol):
    """What decoding needs from a tokenizer (``CharTokenizer`` and ``SubwordTokenizer`` both provide it)."""

    def encode(self, text: str) -> list[int]: ...

    def decode_bytes(self, ids: list[int]) -> bytes: ...


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
# Incremental text: UTF-8 reassembly and stop strings


class RowText:
    """Decodes one row's tokens into text pieces that never split a character or leak part of a stop string."""

    def __init__(self, tokenizer: _ByteTokenizer, stops: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        # errors="replace": only invalid UTF-8 becomes U+FFFD; an incomplete character waits for its next bytes.
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""  # decoded but not yet released (a possible beginning of a stop string)

    def add(self, token_id: int) -> tuple[str, bool]:
        """Feed one token; return (text now safe to show, whether a stop string was completed)."""
        self.pending += self.decoder.decode(self.tokenizer.decode_bytes([token_id]))
        if not self.stops:
            piece, self.pending = self.pending, ""
            return piece, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            piece, self.pending = self.pending[: min(hits)], ""
            return piece, True
        # Hold back the longest tail that could still grow into a stop string.
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:k]):
                    hold = k
                    break
        cut = len(self.pending) - hold
        piece, self.pending = self.pending[:cut], self.pending[cut:]
        return piece, False

    def finish(self) -> str:
        """Release everything still held (a dangling partial character becomes U+FFFD)."""
        piece = self.pending + self.decoder.decode(b"", final=True)
        self.pending = ""
        return piece


# ----------------------------------------------------------------------------------------------------------------
# The decoding loop


class _Decoder:
    """Holds the token buffer, mask, cache and per-row state of one generation; ``step()`` adds one token."""

    def __init__(
        self,
        model: nn.Module,
        ids: torch.Tensor,
        mask: torch.Tensor | None,
        max_new_tokens: int,
        *,
        sampling: SamplingConfig,
        eos_ids: list[int],
        pad_token_id: int,
        generator: torch.Generator | None,
        on_overflow: str,
        can_stop: bool = False,
        logprobs: int | None = None,
    ) -> None:
        from llm_lab.core.model.kv_cache import KVCache  # the decode layer sits above the model

        config = model.config
        self.model = model
        # Per step, MiniGPT is told two things a stand-in model may not know: only the last position's logits are
        # needed, and the ids need no range check (the prompt was checked once, up front, and every new id is drawn
        # from the model's own vocabulary), so a step on a GPU reads nothing back for it.
        known = inspect.signature(model.forward).parameters
        self.step_kwargs = {"logits_to_keep": 1} if "logits_to_keep" in known else {}
        if "check_id_range" in known:
            self.step_kwargs["check_id_range"] = False
        self.generator = generator
        self.pad_token_id = pad_token_id
        self.logprobs = logprobs
        # With logprobs: the last step's (chosen (B,), top ids (B, N), top logprobs (B, N)), see step_logprobs.
        self.last_logprobs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        B, P = ids.shape
        W = config.max_positions
        self.window = W
        if on_overflow != "slide":
            if P > W:
                raise ValueError(
                    f"the prompt has {P} tokens but the model takes at most max_positions={W}; shorten it or pass "
                    "on_overflow='slide' to keep only the last tokens"
                )
            room = W - P + 1
            if max_new_tokens > room:
                if on_overflow == "error":
                    raise ValueError(
                        f"{P} prompt tokens + {max_new_tokens} new tokens do not fit in max_positions={W} (at most "
                        f"{room} new tokens fit); lower max_new_tokens or pass on_overflow='slide' or 'stop'"
                    )
                max_new_tokens = room
        self.max_steps = max_new_tokens
        self.prompt_len = P
        self.length = P  # filled columns of self.tokens
        device = ids.device
        self.tokens = torch.empty(B, P + max_new_tokens, dtype=torch.long, device=device)
        self.tokens[:, :P] = ids
        self.mask: torch.Tensor | None = None
        if mask is not None:
            # New tokens are always real; finished rows' padding is never read back, so it stays 1 too. Boolean: the
            # 0/1 values were checked up front, and a bool mask needs no per-step value check in the model.
            self.mask = torch.ones(B, P + max_new_tokens, dtype=torch.bool, device=device)
            self.mask[:, :P] = mask
        cache_len = min(P + max_new_tokens - 1, W)
        self.cache = KVCache(config, B, max_len=cache_len) if P <= W and cache_len >= P else None
        self.finished = torch.zeros(B, dtype=torch.bool, device=device)
        self.eos = torch.tensor(eos_ids, dtype=torch.long, device=device) if eos_ids else None
        # Rows can finish early through an end token or (set from outside) a stop string.
        self.rows_can_finish = bool(eos_ids) or can_stop
        self.sampler = Sampler(sampling, ids, config.vocab_size, mask)

    def _next_logits(self) -> torch.Tensor:
        """``(B, V)`` logits for the token after ``tokens[:, :length]``."""
        L = self.length
        cache = self.cache
        if cache is not None and cache.max_len >= L:
            mask = None if self.mask is None else self.mask[:, :L]
            logits, _ = self.model(
                self.tokens[:, cache.length : L],
                attention_mask=mask,
                past_key_values=cache,
                use_cache=True,
                **self.step_kwargs,
            )
        else:
            # Past the window: recompute over the last W tokens, positions renumbered from the mask.
            start = max(L - self.window, 0)
            mask = None if self.mask is None else self.mask[:, start:L]
            logits, _ = self.model(self.tokens[:, start:L], attention_mask=mask, **self.step_kwargs)
        return logits[:, -1, :]

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.sampler.greedy:
            logits = logits.float()  # sampling maths in fp32 whatever the model's dtype
        scores = self.sampler.process(logits)
        check_next_token_scores(scores, logits)  # NaN weights or an overflow: a ValueError, never a NaN draw
        return self.sampler.pick(scores, self.generator)

    def step(self) -> torch.Tensor:
        """Run one forward pass and append one token per row; return the ``(B,)`` new tokens."""
        logits = self._next_logits()
        token = self._pick(logits)
        if self.rows_can_finish:
            token = token.masked_fill(self.finished, self.pad_token_id)
        if self.logprobs is not None:
            self.last_logprobs = step_logprobs(logits, token, self.logprobs)
        if self.eos is not None:
            if self.eos.numel() == 1:
                self.finished |= token == self.eos
            else:
                self.finished |= torch.isin(token, self.eos)
        self.tokens[:, self.length] = token
        self.length += 1
        self.sampler.advance(token)
        return token

    def mark_finished(self, row: int) -> None:
        self.finished[row] = True

    @property
    def steps(self) -> int:
        return self.length - self.prompt_len


# ----------------------------------------------------------------------------------------------------------------
# Public entry points


def default_overflow_policy(config: Any) -> OverflowPolicy:
    """``"stop"`` for a positional encoding that extrapolates (``config.extrapolates``, declared by its class: it runs
    up to ``max_positions``), ``"slide"`` for one that cannot go past the context (learned positions)."""
    return "stop" if config.extrapolates else "slide"


@dataclass(frozen=True)
class _Call:
    """One validated call of :func:`generate` or :func:`stream`: the decoder, and what turning its tokens into
    results needs."""

    decoder: _Decoder
    prompt_lengths: list[int]
    stops: list[str]
    eos_ids: frozenset[int]
    tokenizer: Any


def _setup(
    model: nn.Module,
    input_ids: Any,
    max_new_tokens: int,
    *,
    sampling: SamplingConfig | None,
    settings: dict[str, Any],
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int | None,
    stop: str | Sequence[str] | None,
    attention_mask: torch.Tensor | None,
    generator: torch.Generator | None,
    seed: int | None,
    tokenizer: Any,
    on_overflow: str | None,
    logprobs: int | None = None,
    threads: Threads | None = AUTO,
) -> _Call:
    settle_threads(threads)
    if not hasattr(model, "config"):
        raise ValueError("model must be a MiniGPT (or expose .config like one)")
    config = model.config
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    sampling = SamplingConfig.from_kwargs(sampling, **settings)
    if on_overflow is None:
        on_overflow = default_overflow_policy(config)
    if on_overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"on_overflow={on_overflow!r} is not supported; choose one of: {', '.join(OVERFLOW_POLICIES)}")
    if generator is not None and seed is not None:
        raise ValueError("pass either generator= or seed=, not both")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if seed is not None:
        check_seed(seed)
    eos_ids = _token_list(eos_token_id, "eos_token_id", config.vocab_size)
    if pad_token_id is None:
        pad_token_id = eos_ids[0] if eos_ids else 0
    _token_list(pad_token_id, "pad_token_id", config.vocab_size)
    stops = _stop_list(stop, tokenizer)
    if logprobs is not None:
        check_top_n(logprobs, config.vocab_size)
    device = model_device(model)
    ids, mask, lengths = prepare_prompts(input_ids, attention_mask, pad_token_id, config.vocab_size, device)
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    if pays_to_prepare(model, new_tokens=max_new_tokens):
        model = prepare_for_decode(model)  # a snapshot of the current weights, for this call only
    decoder = _Decoder(
        model,
        ids,
        mask,
        max_new_tokens,
        sampling=sampling,
        eos_ids=eos_ids,
        pad_token_id=pad_token_id,
        generator=generator,
        on_overflow=on_overflow,
        can_stop=bool(stops),
        logprobs=logprobs,
    )
    return _Call(decoder, lengths, stops, frozenset(eos_ids), tokenizer)


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
    sampling: SamplingConfig | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    stop: str | Sequence[str] | None = None,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    tokenizer: Any = None,
    seed: int | None = None,
    pad_token_id: int | None = None,
    on_overflow: OverflowPolicy | None = None,
    logprobs: int | None = None,
    threads: Threads | None = AUTO,
    **sampling_settings: Any,
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
        sampling: the sampling settings as one
            :class:`~llm_lab.core.decode.sampling.SamplingConfig` (default: its defaults, temperature 1, no
            filters).
        **sampling_settings: the same settings as keywords (``temperature=0.8, top_k=50``; ``0`` is greedy),
            replacing those of ``sampling``: every registered processor's setting, see ``processors.py`` for
            each one's rule and the order they apply in.
        eos_token_id: end token id(s); a row finishes after producing one. ``None``: no end token.
        stop: stop string(s), matched on the decoded new text (needs ``tokenizer``); the text is cut before it.
        attention_mask: ``(B, P)`` 0/1 mask for a tensor ``input_ids``: zeros then ones in each row (left
            padding).
        generator: the random source for sampling (on the model's device).
        tokenizer: with ``decode_bytes(ids) -> bytes``; enables ``texts`` and ``stop``.
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
    call = _setup(
        model,
        input_ids,
        max_new_tokens,
        sampling=sampling,
        settings=sampling_settings,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        stop=stop,
        attention_mask=attention_mask,
        generator=generator,
        seed=seed,
        tokenizer=tokenizer,
        on_overflow=on_overflow,
        logprobs=logprobs,
        threads=threads,
    )
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
            scored = _stack_logprobs(steps_scored, token_ids, B) if logprobs is not None else []
            texts = None
            if tokenizer is not None:
                texts = [tokenizer.decode_bytes(ids).decode("utf-8", errors="replace") for ids in token_ids]
    sequences = decoder.tokens[:, : decoder.length].clone()
    return GenerationOutput(
        sequences, token_ids, texts, reasons, call.prompt_lengths, scored if logprobs is not None else None
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
    sampling: SamplingConfig | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    stop: str | Sequence[str] | None = None,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    tokenizer: Any = None,
    seed: int | None = None,
    pad_token_id: int | None = None,
    on_overflow: OverflowPolicy | None = None,
    logprobs: int | None = None,
    threads: Threads | None = AUTO,
    **sampling_settings: Any,
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
    call = _setup(
        model,
        input_ids,
        max_new_tokens,
        sampling=sampling,
        settings=sampling_settings,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        stop=stop,
        attention_mask=attention_mask,
        generator=generator,
        seed=seed,
        tokenizer=tokenizer,
        on_overflow=on_overflow,
        logprobs=logprobs,
        threads=threads,
    )

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
