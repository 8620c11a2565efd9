"""Held-out evaluation of a language model on a text: loss, perplexity and bits per byte.

The text is tokenized once and cut into contiguous, non-overlapping windows of the model's context, so every
token after the first is predicted exactly once (when the tokenizer has an end-of-text token it is put in front,
so the first token is predicted too, from a document boundary). Summing the per-token losses over all windows
gives the total negative log-likelihood ``NLL`` in nats, and

* ``loss = NLL / predicted_tokens`` (nats per token), ``perplexity = exp(loss)``,
* ``bits_per_byte = NLL / ln 2 / predicted_bytes``, where ``predicted_bytes`` is the UTF-8 length of the
  predicted tokens' text. Unlike loss and perplexity it does not depend on the tokenizer, so a character model
  and a BPE model can be compared with it.

Windows do not overlap, so tokens early in a window see little context; this is the usual, cheap estimate
(it is slightly pessimistic compared with a sliding window).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llm_lab.utils.devices import resolve_device
from llm_lab.utils.modules import eval_mode
from llm_lab.utils.threads import AUTO, Threads, settle_threads

__all__ = ["EvalResult", "evaluate_text"]


@dataclass
class EvalResult:
    """Result of :func:`evaluate_text`.

    Attributes:
        loss: mean negative log-likelihood per predicted token, in nats.
        perplexity: ``exp(loss)``.
        bits_per_byte: total NLL in bits divided by the UTF-8 bytes of the predicted tokens.
        tokens: number of predicted tokens.
        bytes: UTF-8 bytes of the predicted tokens.
        total_nll: summed NLL in nats.
    """

    loss: float
    perplexity: float
    bits_per_byte: float
    tokens: int
    bytes: int
    total_nll: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.inference_mode()
def evaluate_text(
    model: nn.Module,
    tokenizer: Any,
    text: str,
    *,
    context_length: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    device: str | torch.device | None = None,
    threads: Threads | None = AUTO,
) -> EvalResult:
    """Loss, perplexity and bits per byte of ``model`` on ``text``.

    Args:
        model: a model returning ``(logits, past)`` from ``model(input_ids)``.
        tokenizer: the model's tokenizer (``encode``, ``decode_bytes``, ``eot_token_id``).
        text: the held-out text.
        context_length: window length; default ``model.config.context_length``.
        batch_size: windows per forward pass.
        max_tokens: evaluate only the first this many tokens of the text (after encoding).
        device: where to run (default: where the model is).
        threads: torch's CPU threads: ``"auto"`` (default, the command line's rule, settled once per process),
            a number, or ``None`` to leave the process setting alone; see
            :func:`~llm_lab.utils.threads.settle_threads`.

    Returns:
        An :class:`EvalResult`.

    Raises:
        ValueError: an empty text, a text of a single token, non-positive sizes, or a bad device name.
    """
    settle_threads(threads)
    config = getattr(model, "config", None)
    window = context_length if context_length is not None else getattr(config, "context_length", None)
    if not isinstance(window, int) or window <= 0:
        raise ValueError(f"context_length must be a positive integer, got {window!r}")
    if config is not None and window > config.max_positions:
        raise ValueError(f"context_length={window} is longer than the model accepts ({config.max_positions})")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if max_tokens is not None and max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")

    ids = list(tokenizer.encode(text))
    if max_tokens is not None:
        ids = ids[:max_tokens]
    eot = getattr(tokenizer, "eot_token_id", None)
    if eot is not None:
        ids = [eot, *ids]
    if len(ids) < 2:
        raise ValueError(
            f"the text is {len(text)} characters, {len(ids)} token(s) after encoding; at least 2 tokens are needed "
            "to predict anything"
        )
    predicted_bytes = len(tokenizer.decode_bytes(ids[1:]))  # the targets: every id after the first
    if predicted_bytes == 0:
        raise ValueError("the evaluated tokens decode to no bytes; cannot compute bits per byte")

    device = resolve_device(device) or next(model.parameters()).device
    data = torch.tensor(ids, dtype=torch.long)
    n_targets = len(ids) - 1
    starts = list(range(0, n_targets, window))
    full = [s for s in starts if s + window <= n_targets]
    tail = [s for s in starts if s + window > n_targets]
    total_nll = 0.0
    with eval_mode(model):
        for group, length in [(full, window)] + [([s], n_targets - s) for s in tail]:
            for i in range(0, len(group), batch_size):
                chunk = group[i : i + batch_size]
                x = torch.stack([data[s : s + length] for s in chunk]).to(device)
                y = torch.stack([data[s + 1 : s + 1 + length] for s in chunk]).to(device)
                logits, _ = model(x)
                nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
                total_nll += float(nll)

    loss = total_nll / n_targets
    return EvalResult(
        loss=loss,
        perplexity=math.exp(loss),
        bits_per_byte=total_nll / math.log(2) / predicted_bytes,
        tokens=n_targets,
        bytes=predicted_bytes,
        total_nll=total_nll,
    )
