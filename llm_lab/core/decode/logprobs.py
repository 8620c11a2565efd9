"""Log-probabilities of tokens: how likely the model found each token it produced or was given.

Which distribution. Every log-probability here is ``log_softmax`` (in float32) of the model's *raw* next-token
logits: before the repetition penalty, temperature, top-k, top-p and min-p. This is what the large inference
servers report by default (OpenAI's completions API, vLLM's default ``logprobs_mode``), and it makes the numbers
a property of the model and the text alone: the same token after the same prefix has the same log-probability
whether it was sampled at temperature 0.2 or 1.5, or was part of the prompt. A token that a filter made
impossible to sample still has its finite raw log-probability.

* :func:`score_tokens` scores a given text (prompt scoring, perplexity per token): one forward pass.
* :func:`generate <llm_lab.core.decode.generate.generate>` and :func:`stream <llm_lab.core.decode.generate.stream>`
  take ``logprobs=N`` and report, per new token, a :class:`TokenLogprob` (its log-probability and the ``N`` most
  likely alternatives with theirs), computed from the same logits the token was picked from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llm_lab.core.decode.prompts import model_device, prepare_prompts
from llm_lab.utils.modules import eval_mode

__all__ = ["TokenLogprob", "check_top_n", "score_tokens", "step_logprobs", "to_token_logprobs"]


@dataclass(frozen=True)
class TokenLogprob:
    """One token and what the model thought of it.

    Attributes:
        token_id: the token.
        logprob: its natural-log probability under the model's raw next-token distribution (see the module docs).
        top: the ``N`` most likely tokens at that position as ``(token_id, logprob)``, most likely first (ties
            in ``torch.topk``'s order); empty when no alternatives were asked for.
    """

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def check_top_n(top_n: Any, vocab_size: int, name: str = "logprobs") -> None:
    """Raise ``ValueError`` unless ``top_n`` is an integer in ``[0, vocab_size]``."""
    if isinstance(top_n, bool) or not isinstance(top_n, int) or not 0 <= top_n <= vocab_size:
        raise ValueError(
            f"{name} must be an integer in [0, vocab_size={vocab_size}] (how many alternatives to report), "
            f"got {top_n!r}"
        )


def step_logprobs(
    logits: torch.Tensor, chosen: torch.Tensor, top_n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities of ``chosen`` and the ``top_n`` best tokens under ``log_softmax(logits)``.

    Args:
        logits: ``(B, V)`` raw logits (any float dtype; the softmax runs in float32).
        chosen: ``(B,)`` token ids.
        top_n: how many alternatives (``>= 0``).

    Returns:
        ``(chosen_logprobs (B,), top_ids (B, top_n), top_logprobs (B, top_n))``, on the logits' device.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
    chosen_lp = logp.gather(-1, chosen[:, None].long())[:, 0]  # (B,)
    top = logp.topk(top_n, dim=-1)  # (B, top_n) each
    return chosen_lp, top.indices, top.values


def to_token_logprobs(
    token_ids: Sequence[int],
    logprobs: Sequence[float],
    top_ids: Sequence[Sequence[int]],
    top_lps: Sequence[Sequence[float]],
) -> list[TokenLogprob]:
    """Zip plain lists (from ``tensor.tolist()``) into :class:`TokenLogprob` items."""
    return [
        TokenLogprob(int(t), float(lp), tuple(zip(map(int, ids), map(float, lps), strict=True)))
        for t, lp, ids, lps in zip(token_ids, logprobs, top_ids, top_lps, strict=True)
    ]


def score_tokens(
    model: nn.Module,
    input_ids: torch.Tensor | Sequence[int] | Sequence[Sequence[int]],
    *,
    top_n: int = 0,
    attention_mask: torch.Tensor | None = None,
) -> list[list[TokenLogprob | None]]:
    """The log-probability of every token of one or more texts given the tokens before it.

    Args:
        model: a ``MiniGPT``; run in eval mode, without gradients.
        input_ids: one sequence (``list[int]`` or 1-D tensor), several (``list[list[int]]``, left-padded here),
            or a ``(B, T)`` tensor (left-padded when ``attention_mask`` is given). At most
            ``config.max_positions`` tokens.
        top_n: also report the ``top_n`` most likely tokens at each position.
        attention_mask: ``(B, T)`` 0/1 left-padding mask for a tensor ``input_ids``.

    Returns:
        Per row, one entry per real (unpadded) token: ``None`` for the first (nothing predicts it), else its
        :class:`TokenLogprob`. ``-sum(logprob) / (n - 1)`` over a row is its mean loss (log of the perplexity).

    Raises:
        ValueError: an empty or out-of-vocabulary input, a sequence longer than ``max_positions``, a bad mask or
            ``top_n``.
    """
    config = model.config
    check_top_n(top_n, config.vocab_size, "top_n")
    ids, mask, lengths = prepare_prompts(input_ids, attention_mask, 0, config.vocab_size, model_device(model))
    B, T = ids.shape
    if config.max_positions < T:
        raise ValueError(
            f"cannot score {T} tokens: the model sees at most max_positions={config.max_positions}; "
            "score a shorter text"
        )
    with eval_mode(model), torch.inference_mode():
        logits, _ = model(ids, attention_mask=mask)  # (B, T, V)
        if T == 1:
            return [[None] for _ in range(B)]
        # Position t - 1 predicts token t.
        chosen_lp, top_ids, top_lps = step_logprobs(
            logits[:, :-1].reshape(B * (T - 1), -1), ids[:, 1:].reshape(-1), top_n
        )
    chosen_lp = chosen_lp.view(B, T - 1).tolist()
    top_ids = top_ids.view(B, T - 1, top_n).tolist()
    top_lps = top_lps.view(B, T - 1, top_n).tolist()
    rows: list[list[TokenLogprob | None]] = []
    for r, n in enumerate(lengths):
        start = T - n  # the first real token; it has no score
        scored = to_token_logprobs(
            ids[r, start + 1 :].tolist(), chosen_lp[r][start:], top_ids[r][start:], top_lps[r][start:]
        )
        rows.append([None, *scored])
    return rows
