"""The tokenizer over HTTP, as lm-evaluation-harness's ``tokenizer_backend=remote`` reads it (vLLM's routes).

- ``GET /tokenizer_info``: ``eos_token`` (the end-of-text token's text, ``null`` for a tokenizer without one),
  ``bos_token`` (``null``: packages have no separate start token; the harness then starts documents from
  ``eos_token``), ``pad_token`` (as ``eos_token``), ``chat_template`` (the tokenizer's Jinja chat
  template, the very text its ``tokenizer_config.json`` stores, for a tokenizer with the chat tokens; ``null`` for
  one without), ``model_max_length`` (the context window in tokens) and ``vocab_size``.
- ``POST /tokenize {"prompt": str}`` -> ``{"tokens": [...], "count": n, "max_model_len": window}``. The text of a
  special token alone (``"<|endoftext|>"``) is that token's id, which is how the harness finds the end-of-text id;
  inside a longer text it is ordinary text, so user input cannot inject a document separator.
- ``POST /detokenize {"tokens": [...]}`` -> ``{"prompt": str}``.

The harness must be told the context it may use: ``max_length=WINDOW+1`` in ``--model_args`` (it keeps one position
for a generated token); a longer prompt is refused with a 400 that says so.
"""

from __future__ import annotations

from typing import Any

from llm_lab.serve.engine import CompletionEngine
from llm_lab.serve.schemas import DetokenizeRequest, TokenizeRequest

__all__ = ["RequestRefusedError", "detokenize", "tokenize", "tokenizer_info"]


class RequestRefusedError(ValueError):
    """A request the server refuses: ``status``, the field at fault and a short code go into the error body."""

    def __init__(self, status: int, message: str, param: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _eos_text(engine: CompletionEngine) -> str | None:
    specials = getattr(engine.tokenizer, "special_tokens", None) or {}
    return next((text for text, i in specials.items() if i == engine.eot_token_id), None)


def tokenizer_info(engine: CompletionEngine) -> dict[str, Any]:
    """The body of ``GET /tokenizer_info``."""
    eos = _eos_text(engine) if engine.eot_token_id is not None else None
    return {
        "eos_token": eos,
        "bos_token": None,
        "pad_token": eos,
        "chat_template": getattr(engine.tokenizer, "chat_template", None),
        "model_max_length": engine.context_window,
        "vocab_size": int(engine.config.vocab_size),
    }


def tokenize(engine: CompletionEngine, request: TokenizeRequest) -> dict[str, Any]:
    """The body of ``POST /tokenize`` (see the module docs for special tokens).

    Raises:
        RequestRefusedError: a text the tokenizer cannot encode (a character outside a char vocabulary).
    """
    specials = getattr(engine.tokenizer, "special_tokens", None) or {}
    if request.prompt in specials:
        tokens = [int(specials[request.prompt])]
    else:
        try:
            tokens = [int(i) for i in engine.tokenizer.encode(request.prompt)]
        except ValueError as error:
            raise RequestRefusedError(400, f"prompt: {error}", "prompt", "invalid_prompt") from None
    return {"tokens": tokens, "count": len(tokens), "max_model_len": engine.context_window}


def detokenize(engine: CompletionEngine, request: DetokenizeRequest) -> dict[str, Any]:
    """The body of ``POST /detokenize``.

    Raises:
        RequestRefusedError: an id outside the vocabulary (the field names its position).
    """
    check_token_ids(engine, request.tokens, "tokens")
    return {"prompt": engine.tokenizer.decode(request.tokens)}


def check_token_ids(engine: CompletionEngine, ids: list[int], param: str) -> list[int]:
    """``ids`` unchanged when every one lies in the vocabulary; else a 422 naming the first that does not."""
    vocab = int(engine.config.vocab_size)
    for position, token in enumerate(ids):
        if token >= vocab:
            raise RequestRefusedError(
                422,
                f"{param}.{position}: token id {token} is outside the vocabulary (0 to {vocab - 1})",
                f"{param}.{position}",
            )
    return ids
