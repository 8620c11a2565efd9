"""Look inside a model on one text: token probabilities, attention maps and the logit lens.

One traced forward pass (:class:`~llm_lab.core.model.trace.ForwardTrace`) gives everything:

* per token, its log-probability given the tokens before it and the most likely alternatives at that position
  (the model's raw distribution, see :mod:`llm_lab.core.decode.logprobs`);
* per layer and head, the attention probabilities ``(T, T)`` (row ``t``: how query ``t`` spreads its attention
  over keys ``0..t``), from the written-out attention path;
* the logit lens (nostalgebraist, 2020, "interpreting GPT: the logit lens"): the residual stream after the
  embeddings and after each block, read through the final norm and the output head as if the model ended there.
  Its last row is the model's own output, so one sees at which layer the final prediction forms.

The CLI (``llm-lab inspect``), the server (``POST /v1/inspect``) and the playground's Inspect view all read an
:class:`Inspection`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llm_lab.core.decode.logprobs import TokenLogprob, check_top_n, step_logprobs, to_token_logprobs
from llm_lab.core.model.trace import ForwardTrace
from llm_lab.utils.modules import eval_mode

__all__ = ["Inspection", "inspect_ids", "inspect_text", "lens_layer_names", "logit_lens_logits", "token_strings"]


def logit_lens_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token logits ``(..., vocab_size)`` read from a residual stream ``(..., n_embd)``: final norm, then head."""
    return model.lm_head(model.final_norm(hidden))


def lens_layer_names(n_layer: int) -> list[str]:
    """Names of the logit-lens rows: ``embeddings``, then ``layer 1`` .. ``layer n_layer`` (1-based, after block)."""
    return ["embeddings", *(f"layer {i}" for i in range(1, n_layer + 1))]


def token_strings(tokenizer: Any, token_ids: list[int]) -> list[str]:
    """Each token's own text (its bytes decoded alone; a piece of a multi-byte character shows as U+FFFD)."""
    return [tokenizer.decode_bytes([t]).decode("utf-8", errors="replace") for t in token_ids]


@dataclass
class Inspection:
    """What :func:`inspect_ids` found on one sequence of ``T`` tokens.

    Attributes:
        token_ids: the ``T`` input tokens.
        tokens: their display texts (see :func:`token_strings`); token ids as strings without a tokenizer.
        logprobs: per token, its :class:`TokenLogprob` given the tokens before it (``None`` for the first).
        attentions: ``(n_layer, n_head, T, T)`` float32 attention probabilities (zero above the diagonal).
        lens_top_ids: ``(n_layer + 1, T, lens_top)``: at each lens row and position, the most likely next tokens.
        lens_top_logprobs: ``(n_layer + 1, T, lens_top)``: their log-probabilities.
        lens_next_logprobs: ``(n_layer + 1, T - 1)``: the log-probability each lens row gives the actual next token.
        lens_names: the row names (:func:`lens_layer_names`).
        id_text: the display text of every token id above (inputs, alternatives, lens predictions).
    """

    token_ids: list[int]
    tokens: list[str]
    logprobs: list[TokenLogprob | None]
    attentions: torch.Tensor
    lens_top_ids: torch.Tensor
    lens_top_logprobs: torch.Tensor
    lens_next_logprobs: torch.Tensor
    lens_names: list[str]
    id_text: dict[int, str]

    def token_rows(self) -> list[dict[str, Any]]:
        """One table row per token: position, token, probability, and the alternatives at its position."""
        rows = []
        for t, (text, scored) in enumerate(zip(self.tokens, self.logprobs, strict=True)):
            row: dict[str, Any] = {"position": t, "token": repr(text), "token_id": self.token_ids[t]}
            if scored is None:
                row.update(logprob=None, prob=None, alternatives="")
            else:
                alternatives = ", ".join(f"{self.id_text[i]!r} {math.exp(lp):.3f}" for i, lp in scored.top)
                row.update(logprob=scored.logprob, prob=math.exp(scored.logprob), alternatives=alternatives)
            rows.append(row)
        return rows

    def lens_rows(self) -> list[dict[str, Any]]:
        """One table row per (lens row, position): the top prediction and the probability of the actual next token."""
        rows = []
        T = len(self.token_ids)
        top_probs = self.lens_top_logprobs[..., 0].exp().tolist()
        next_probs = self.lens_next_logprobs.exp().tolist()
        for layer, name in enumerate(self.lens_names):
            for t in range(T):
                rows.append(
                    {
                        "layer": name,
                        "position": t,
                        "token": repr(self.tokens[t]),
                        "next_token": repr(self.tokens[t + 1]) if t + 1 < T else None,
                        "top_prediction": repr(self.id_text[int(self.lens_top_ids[layer, t, 0])]),
                        "top_prob": top_probs[layer][t],
                        "next_token_prob": next_probs[layer][t] if t + 1 < T else None,
                    }
                )
        return rows


def inspect_ids(
    model: nn.Module,
    token_ids: list[int],
    *,
    top_n: int = 5,
    lens_top: int = 3,
    tokenizer: Any = None,
) -> Inspection:
    """Run one traced forward pass over ``token_ids`` and collect probabilities, attentions and the logit lens.

    Args:
        model: a ``MiniGPT`` (run in eval mode, without gradients).
        token_ids: the text's tokens, at least one and at most ``config.max_positions``.
        top_n: alternatives reported per token (``0 <= top_n <= vocab_size``).
        lens_top: predictions kept per logit-lens cell (``1 <= lens_top <= vocab_size``).
        tokenizer: for display strings (``decode_bytes``); without one, tokens are shown as their ids.

    Returns:
        An :class:`Inspection` (tensors on the CPU).

    Raises:
        ValueError: empty or too long input, ids outside the vocabulary, or a bad ``top_n`` / ``lens_top``.
    """
    config = model.config
    if not isinstance(token_ids, list) or not token_ids:
        raise ValueError("nothing to inspect: give at least one token")
    if len(token_ids) > config.max_positions:
        raise ValueError(
            f"cannot inspect {len(token_ids)} tokens: the model sees at most max_positions={config.max_positions}"
        )
    check_top_n(top_n, config.vocab_size, "top_n")
    check_top_n(lens_top, config.vocab_size, "lens_top")
    if lens_top < 1:
        raise ValueError(f"lens_top must be at least 1, got {lens_top}")
    device = next(model.parameters()).device
    ids = torch.tensor([token_ids], dtype=torch.long, device=device)  # (1, T); the model checks the range
    trace = ForwardTrace()
    with eval_mode(model), torch.inference_mode():
        logits, _ = model(ids, trace=trace)  # (1, T, V)
        chosen, top_ids, top_lps = step_logprobs(logits[0, :-1], ids[0, 1:], top_n)  # position t-1 predicts t
        attentions = torch.cat(trace.attentions).float().cpu()  # (n_layer, n_head, T, T)
        lens_ids, lens_lps, lens_next = [], [], []
        for hidden in trace.hidden_states:
            logp = torch.log_softmax(logit_lens_logits(model, hidden[0]).float(), dim=-1)  # (T, V)
            best = logp.topk(lens_top, dim=-1)
            lens_ids.append(best.indices.cpu())
            lens_lps.append(best.values.cpu())
            lens_next.append(logp[:-1].gather(-1, ids[0, 1:, None])[:, 0].cpu())  # (T - 1,)
    scored = to_token_logprobs(token_ids[1:], chosen.tolist(), top_ids.tolist(), top_lps.tolist())
    lens_top_ids = torch.stack(lens_ids)  # (n_layer + 1, T, lens_top)
    used = sorted({*token_ids, *top_ids.flatten().tolist(), *lens_top_ids.flatten().tolist()})
    texts = token_strings(tokenizer, used) if tokenizer is not None else [str(i) for i in used]
    id_text = dict(zip(used, texts, strict=True))
    return Inspection(
        token_ids=list(token_ids),
        tokens=[id_text[t] for t in token_ids],
        logprobs=[None, *scored],
        attentions=attentions,
        lens_top_ids=lens_top_ids,
        lens_top_logprobs=torch.stack(lens_lps),
        lens_next_logprobs=torch.stack(lens_next),
        lens_names=lens_layer_names(config.n_layer),
        id_text=id_text,
    )


def inspect_text(model: nn.Module, tokenizer: Any, text: str, **kwargs: Any) -> Inspection:
    """Encode ``text`` with ``tokenizer`` and :func:`inspect_ids` it (keyword arguments are passed on).

    Raises:
        ValueError: the text is empty or encodes to no tokens, or does not fit the model's context.
    """
    if not isinstance(text, str) or not text:
        raise ValueError("nothing to inspect: the text is empty")
    token_ids = [int(t) for t in tokenizer.encode(text)]
    if not token_ids:
        raise ValueError("nothing to inspect: the text encodes to no tokens")
    return inspect_ids(model, token_ids, tokenizer=tokenizer, **kwargs)
