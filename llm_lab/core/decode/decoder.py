"""The decoding loop of one generation call: :class:`Decoder` holds the token buffer, mask, KV cache and per-row
state, and each :meth:`Decoder.step` runs one forward pass and adds one token per row.

It also owns the context-overflow policies (``"slide"``, ``"stop"``, ``"error"``) and which one a model gets by
default; :mod:`llm_lab.core.decode.generate` documents what each does for a caller. The entry points
(:func:`~llm_lab.core.decode.generate.generate`, :func:`~llm_lab.core.decode.generate.stream`) validate a call and
then drive a :class:`Decoder`.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from torch import nn

from llm_lab.core.decode.logprobs import step_logprobs
from llm_lab.core.decode.sampler import Sampler, check_next_token_scores
from llm_lab.core.decode.sampling import SamplingConfig

__all__ = ["OVERFLOW_POLICIES", "Decoder", "OverflowPolicy", "default_overflow_policy"]

OverflowPolicy = Literal["slide", "stop", "error"]
OVERFLOW_POLICIES: tuple[str, ...] = ("slide", "stop", "error")


def default_overflow_policy(config: Any) -> OverflowPolicy:
    """``"stop"`` for a positional encoding that extrapolates (``config.extrapolates``, declared by its class: it runs
    up to ``max_positions``), ``"slide"`` for one that cannot go past the context (learned positions)."""
    return "stop" if config.extrapolates else "slide"


class Decoder:
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
