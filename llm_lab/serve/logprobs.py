"""OpenAI's ``logprobs`` object for the completions API, built token by token.

``{"tokens": [...], "token_logprobs": [...], "top_logprobs": [...], "text_offset": [...]}``, one entry per token:

- ``tokens``: the token's own text. A token that is only part of a UTF-8 character (byte-level BPE) is written
  ``"bytes:\\xe2\\x80"``, as OpenAI does.
- ``token_logprobs``: its log-probability under the model's raw distribution (before temperature and the sampling
  filters; see :mod:`llm_lab.core.decode.logprobs`); ``null`` for the first prompt token under ``echo``.
- ``top_logprobs``: ``{token text: logprob}`` of the ``N`` most likely tokens at that position plus the chosen one
  (so up to ``N + 1`` entries, as OpenAI documents); ``null`` where ``token_logprobs`` is.
- ``text_offset``: where the token's text starts in the choice's ``text`` (which holds the prompt under
  ``echo``), counted in characters. A token that ends inside a character starts where that character starts.

With a stop string, the last token is the one that completed it; its text may reach past the cut ``text``.
"""

from __future__ import annotations

import codecs
from typing import Any

from llm_lab.core.decode import TokenLogprob

__all__ = ["LogprobsBuilder", "token_text"]


def token_text(tokenizer: Any, token_id: int) -> str:
    """The token's own text, or ``bytes:\\x..`` when its bytes are not whole UTF-8 characters (OpenAI's form)."""
    raw = tokenizer.decode_bytes([token_id])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class LogprobsBuilder:
    """Accumulates one choice's ``logprobs`` object; :meth:`add` also returns the one-token piece for a stream.

    Args:
        tokenizer: the package's tokenizer (``decode_bytes``).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.offset = 0
        self.body: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

    def token_text(self, token_id: int) -> str:
        """The token's own text (see :func:`token_text`)."""
        return token_text(self.tokenizer, token_id)

    def add(self, token_id: int, scored: TokenLogprob | None) -> dict[str, list[Any]]:
        """Append one token (``scored`` None: no log-probability, the first prompt token); return its piece."""
        text = self.token_text(token_id)
        top = None
        if scored is not None:
            top = {self.token_text(i): lp for i, lp in scored.top}
            top.setdefault(text, scored.logprob)
        piece = {
            "tokens": [text],
            "token_logprobs": [None if scored is None else scored.logprob],
            "top_logprobs": [top],
            "text_offset": [self.offset],
        }
        self.offset += len(self.decoder.decode(self.tokenizer.decode_bytes([token_id])))
        for key, values in piece.items():
            self.body[key].extend(values)
        return piece

    def add_all(self, token_ids: list[int], scored: list[TokenLogprob | None]) -> dict[str, list[Any]]:
        """Append several tokens; return their piece (one object covering all of them)."""
        piece: dict[str, list[Any]] = {key: [] for key in self.body}
        for token_id, item in zip(token_ids, scored, strict=True):
            for key, values in self.add(token_id, item).items():
                piece[key].extend(values)
        return piece
