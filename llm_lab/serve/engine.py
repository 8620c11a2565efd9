"""The model side of the server: one loaded package, prompts in, text out, one token at a time.

:class:`CompletionEngine` knows nothing of HTTP. It turns prompts into token ids and runs
:func:`llm_lab.core.decode.stream` (the library's one decoding loop, which also cuts stop strings and reassembles
characters split over byte-level tokens), with all choices of a request in one batch.

It is not thread-safe on purpose. The server decodes completions on the scheduler's thread through the decode copy
(``scheduler.py``, which falls back to :meth:`CompletionEngine.complete` for models it cannot batch) and runs every
other model call (scoring, inspection) on one worker thread (``runner.py``); neither changes the weights.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llm_lab.core.decode import TokenLogprob, prepare_for_decode, score_tokens
from llm_lab.core.decode import stream as decode_stream
from llm_lab.core.decode.fast_linear import pays_to_prepare
from llm_lab.core.decode.sampling import SamplingConfig
from llm_lab.core.tokenization.chat_tokens import END_TOKEN
from llm_lab.utils.devices import resolve_device

FinishReason = str  # "stop" (end-of-text token or a stop string) or "length" (max_tokens reached)


@dataclass
class SamplingSettings:
    """How to generate one request's choices: a length, the sampling settings (one :class:`SamplingConfig`, passed
    whole to the decoder), stop strings and log-probabilities."""

    max_new_tokens: int
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # report each token's log-probability and this many alternatives


@dataclass
class ChoiceResult:
    """One generated choice: its text (stop string excluded), why it ended, how many tokens it took, and (when
    asked for) each new token's log-probability."""

    text: str
    finish_reason: FinishReason
    completion_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)


class CompletionEngine:
    """A loaded model with its tokenizer, ready to complete prompts.

    Args:
        config: the model's ``MiniGPTConfig``.
        tokenizer: the package's tokenizer (``encode``, ``decode_bytes``, ``eot_token_id``).
        model: the ``MiniGPT`` (put in eval mode here).
        model_name: the id clients see.
        max_tokens_cap: the most new tokens per choice; default (and upper bound): the context window.
        device: move the model there (default: leave it where it is).
        decode_dtype: the weights generation decodes with (``fp32``, ``bf16``, ``int8``, ``auto``; see
            :func:`~llm_lab.core.decode.fast_linear.prepare_for_decode`); scoring and inspection use the model.
    """

    def __init__(
        self,
        config: Any,
        tokenizer: Any,
        model: torch.nn.Module,
        *,
        model_name: str = "llm-lab",
        max_tokens_cap: int | None = None,
        device: str | torch.device | None = None,
        decode_dtype: str = "fp32",
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        device = resolve_device(device)  # a typo is a ValueError naming the choices, not a torch traceback
        self.model = model.to(device) if device is not None else model
        self.model.eval()
        self.device = next(self.model.parameters()).device
        # Prepared once for every request (the weights never change here); scoring and inspection use the model.
        wanted = decode_dtype != "fp32" or pays_to_prepare(self.model)
        self.decode_model = prepare_for_decode(self.model, decode_dtype) if wanted else self.model
        self.model_name = model_name
        # The model sees at most this many positions. The last new token is never fed back, so a prompt of P tokens
        # can get up to context_window - P + 1 new tokens (see llm_lab.core.decode.generate).
        self.context_window = int(config.max_positions)
        if max_tokens_cap is None:
            max_tokens_cap = self.context_window
        if not 1 <= max_tokens_cap <= self.context_window:
            raise ValueError(
                f"max_tokens_cap must be between 1 and the model's context ({self.context_window}), "
                f"got {max_tokens_cap}"
            )
        self.max_tokens_cap = max_tokens_cap
        self.eot_token_id = getattr(tokenizer, "eot_token_id", None)
        # What ends a choice: the end-of-text token and, for a chat model, the turn end (a reply is one turn).
        turn_end = dict(getattr(tokenizer, "special_tokens", {}) or {}).get(END_TOKEN)
        self.eos_token_ids = [int(i) for i in (self.eot_token_id, turn_end) if i is not None]

    @classmethod
    def from_package(
        cls,
        path: str | os.PathLike[str],
        *,
        model_name: str | None = None,
        max_tokens_cap: int | None = None,
        device: str | None = None,
        decode_dtype: str = "fp32",
    ) -> CompletionEngine:
        """Load a model package (or a training run directory) and wrap it."""
        from llm_lab.core.package.io import load_package_or_run

        path = Path(path)
        config, tokenizer, model = load_package_or_run(path, device=device)
        return cls(
            config,
            tokenizer,
            model,
            model_name=model_name or path.resolve().name,
            max_tokens_cap=max_tokens_cap,
            device=device,
            decode_dtype=decode_dtype,
        )

    def describe(self) -> dict[str, Any]:
        """The ``/v1/models`` entry: OpenAI's fields plus the limits a client needs."""
        return {
            "id": self.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "llm-lab",
            "context_length": self.context_window,
            "max_tokens_cap": self.max_tokens_cap,
            "vocab_size": int(self.config.vocab_size),
            # For the playground's Inspect view (its layer and head pickers).
            "n_layer": int(self.config.n_layer),
            "n_head": int(self.config.n_head),
        }

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt. An empty prompt starts from the end-of-text token where the tokenizer has one.

        Raises:
            ValueError: the prompt is empty and there is no end-of-text token to start from, or the tokenizer
                cannot encode it (a character outside a character vocabulary).
        """
        if text == "":
            if self.eot_token_id is None:
                raise ValueError("must not be empty: this model has no end-of-text token to start from")
            return [int(self.eot_token_id)]
        ids = [int(i) for i in self.tokenizer.encode(text)]
        if not ids:
            raise ValueError("encodes to no tokens; give a longer prompt")
        return ids

    def max_new_tokens_after(self, prompt_length: int) -> int:
        """How many new tokens fit after a prompt of ``prompt_length`` tokens (0 or less: the prompt is too long)."""
        return self.context_window - prompt_length + 1

    def new_generator(self, seed: int) -> torch.Generator:
        """A random generator for one request (on the model's device, as sampling draws there)."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        return generator

    def complete(
        self,
        rows: list[list[int]],
        settings: SamplingSettings,
        generator: torch.Generator,
        *,
        on_text: Callable[[int, str], None] | None = None,
        cancelled: threading.Event | None = None,
        on_token: Callable[[int, str, TokenLogprob], None] | None = None,
    ) -> list[ChoiceResult]:
        """Generate one choice per row of prompt ids, all rows in one batch; report text as soon as it is safe.

        Args:
            rows: prompt token ids, one list per choice (repeat a prompt for several choices).
            settings: sampling settings shared by every row.
            generator: the random source (see :meth:`new_generator`).
            on_text: called as ``on_text(row, piece)`` with each new piece of a row's text. Pieces never split a
                character and never show any part of a stop string.
            cancelled: when set (the client went away), generation stops after the current step.
            on_token: with ``settings.logprobs``, called as ``on_token(row, piece, logprob)`` for every new token
                instead of ``on_text`` (``piece`` may be ``""`` while text is held back).

        Returns:
            One :class:`ChoiceResult` per row. ``finish_reason`` is OpenAI's: ``"stop"`` for the end-of-text
            token or a stop string, ``"length"`` when ``settings.max_new_tokens`` were generated.
        """
        pieces: list[list[str]] = [[] for _ in rows]
        reasons = ["length"] * len(rows)
        counts = [0] * len(rows)
        scored: list[list[TokenLogprob]] = [[] for _ in rows]
        chunks = decode_stream(
            self.decode_model,
            rows,
            settings.max_new_tokens,
            sampling=settings.sampling,
            eos_token_id=self.eos_token_ids or None,
            stop=settings.stop or None,
            generator=generator,
            tokenizer=self.tokenizer,
            # The request was checked against the context already; running past it would be a bug here.
            on_overflow="error",
            logprobs=settings.logprobs,
        )
        try:
            for chunk in chunks:
                if chunk.token_id is not None or chunk.finish_reason == "eos":
                    counts[chunk.row] += 1  # the end-of-text token was generated too, so it is counted
                if chunk.logprob is not None:
                    scored[chunk.row].append(chunk.logprob)
                if chunk.logprob is not None and on_token is not None:
                    pieces[chunk.row].append(chunk.text)
                    on_token(chunk.row, chunk.text, chunk.logprob)
                elif chunk.text:
                    pieces[chunk.row].append(chunk.text)
                    if on_text is not None:
                        on_text(chunk.row, chunk.text)
                if chunk.finish_reason is not None:
                    reasons[chunk.row] = "length" if chunk.finish_reason == "length" else "stop"
                if cancelled is not None and cancelled.is_set():
                    break
        finally:
            chunks.close()  # puts the model back in its mode even when the client went away mid-stream
        rows_out = zip(pieces, reasons, counts, scored, strict=True)
        return [ChoiceResult("".join(p), r, c, lp) for p, r, c, lp in rows_out]

    def score(self, ids: list[int], top_n: int) -> list[TokenLogprob | None]:
        """Each prompt token's log-probability given the ones before it (``None`` for the first): for ``echo``."""
        return score_tokens(self.model, ids, top_n=top_n)[0]

    def inspect(self, ids: list[int], top_n: int, lens_top: int) -> Any:
        """Token scores, attention maps and the logit lens of one text (a :class:`llm_lab.core.inspect.Inspection`)."""
        from llm_lab.core.inspect import inspect_ids

        return inspect_ids(self.model, ids, top_n=top_n, lens_top=lens_top, tokenizer=self.tokenizer)
