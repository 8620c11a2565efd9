"""``POST /v1/inspect`` (an extension of the OpenAI shape): token probabilities, attention maps and the logit lens
of one text, as JSON for the playground's Inspect view and for scripts.

Response (``T`` tokens; ``L`` layers)::

    {"object": "inspection", "model": ..., "tokens": [T token texts], "token_ids": [...], "text_offset": [...],
     "token_logprobs": [null, ...],                       # each token given the ones before it
     "top_logprobs": [null, [{"token", "token_id", "logprob"}, ...], ...],
     "attention": {"layers": [...], "heads": [...],
                   "weights": [layer][head][query t] -> t + 1 probabilities over keys 0..t},
     "logit_lens": {"layers": ["embeddings", "layer 1", ...],       # L + 1 rows, the last is the model's output
                    "top": [row][position] -> [{"token", "token_id", "logprob"}, ...],
                    "next_token_logprobs": [row][position] -> the actual next token's log-probability (T - 1)}}

Limits: the text must fit the model's context, and the attention maps may hold at most
``MAX_ATTENTION_VALUES`` numbers (``layers x heads x T (T + 1) / 2``; ask for fewer ``layers``/``heads``).
Attention probabilities are rounded to 5 decimals; log-probabilities are float32 values. Token texts are written
as in the completions API's ``logprobs`` (``"bytes:\\xc3"`` for a piece of a character); ``text_offset`` says where
each token starts in the text. The text of token ``i`` is ``text[text_offset[i]:text_offset[i + 1]]``: a character
split over several tokens belongs to its last piece, the other pieces are empty there.
"""

from __future__ import annotations

import codecs
from typing import Any

from llm_lab.serve.engine import CompletionEngine
from llm_lab.serve.logprobs import token_text
from llm_lab.serve.schemas import InspectRequest

__all__ = ["MAX_ATTENTION_VALUES", "InspectPlan", "InspectRequestError", "plan_inspection"]

MAX_ATTENTION_VALUES = 2_000_000  # about 12 MB of JSON: a full 1024-token context for one layer and four heads


class InspectRequestError(ValueError):
    """A request the server refuses: ``status``, the field at fault and a short code go into the error body."""

    def __init__(self, status: int, message: str, param: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _pick(asked: list[int] | None, count: int, what: str) -> list[int]:
    if asked is None:
        return list(range(count))
    for value in asked:
        if value >= count:
            raise InspectRequestError(
                422,
                f"{what}s: {what} {value} does not exist; this model has {count} {what}s (0 to {count - 1})",
                f"{what}s",
                "invalid_value",
            )
    return list(dict.fromkeys(asked))


class InspectPlan:
    """A checked inspect request: the token ids and which layers/heads to return; :meth:`run` on the worker."""

    def __init__(self, engine: CompletionEngine, request: InspectRequest, ids: list[int], layers: list[int],
                 heads: list[int]) -> None:  # fmt: skip
        self.engine, self.request, self.ids, self.layers, self.heads = engine, request, ids, layers, heads

    def run(self) -> dict[str, Any]:
        """Run the traced forward pass and build the response body."""
        engine, request = self.engine, self.request
        found = engine.inspect(self.ids, request.top_logprobs, request.lens_top)
        text = {i: token_text(engine.tokenizer, i) for i in found.id_text}

        def alternatives(pairs: Any) -> list[dict[str, Any]]:
            return [{"token": text[int(i)], "token_id": int(i), "logprob": float(lp)} for i, lp in pairs]

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        offsets, offset = [], 0
        for token_id in self.ids:
            offsets.append(offset)
            offset += len(decoder.decode(engine.tokenizer.decode_bytes([token_id])))
        weights = []
        if self.layers and self.heads:
            chosen = found.attentions[self.layers][:, self.heads].double()  # (layers, heads, T, T)
            rounded = ((chosen * 1e5).round() / 1e5).tolist()
            weights = [[[row[: t + 1] for t, row in enumerate(head)] for head in layer] for layer in rounded]
        lens_ids, lens_lps = found.lens_top_ids.tolist(), found.lens_top_logprobs.tolist()
        return {
            "object": "inspection",
            "model": engine.model_name,
            "tokens": [text[i] for i in found.token_ids],
            "token_ids": found.token_ids,
            "text_offset": offsets,
            "token_logprobs": [None if s is None else s.logprob for s in found.logprobs],
            "top_logprobs": [None if s is None else alternatives(s.top) for s in found.logprobs],
            "attention": {"layers": self.layers, "heads": self.heads, "weights": weights},
            "logit_lens": {
                "layers": found.lens_names,
                "top": [
                    [alternatives(zip(ids, lps, strict=True)) for ids, lps in zip(row_ids, row_lps, strict=True)]
                    for row_ids, row_lps in zip(lens_ids, lens_lps, strict=True)
                ],
                "next_token_logprobs": found.lens_next_logprobs.tolist(),
            },
        }


def plan_inspection(engine: CompletionEngine, request: InspectRequest) -> InspectPlan:
    """Encode the text and check it against the model's context and the response-size limit.

    Raises:
        InspectRequestError: a text the tokenizer cannot encode or longer than the context (400), an unknown layer
            or head (422), or attention maps over ``MAX_ATTENTION_VALUES`` numbers (400).
    """
    config = engine.config
    try:
        ids = engine.encode(request.text)
    except ValueError as error:
        raise InspectRequestError(400, f"text: {error}", "text", "invalid_prompt") from None
    window = engine.context_window
    if len(ids) > window:
        raise InspectRequestError(
            400,
            f"text is {len(ids)} tokens long, more than this model's context of {window} tokens; shorten it",
            "text",
            "context_length_exceeded",
        )
    layers = _pick(request.layers, int(config.n_layer), "layer")
    heads = _pick(request.heads, int(config.n_head), "head")
    T = len(ids)
    values = len(layers) * len(heads) * T * (T + 1) // 2
    if values > MAX_ATTENTION_VALUES:
        raise InspectRequestError(
            400,
            f"response too large: {len(layers)} layers x {len(heads)} heads x {T} tokens make {values:,} attention "
            f"weights, over this server's limit of {MAX_ATTENTION_VALUES:,}; ask for fewer layers or heads "
            '(e.g. "layers": [0], "heads": [0])',
            "layers",
            "response_too_large",
        )
    return InspectPlan(engine, request, ids, layers, heads)
