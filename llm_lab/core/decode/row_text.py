"""Incremental detokenization: :class:`RowText` turns one row's new tokens into text pieces as they arrive.

A piece never splits a multi-byte UTF-8 character (bytes are reassembled with an incremental decoder) and never
shows any part of a stop string (a tail that could still grow into one is held back). Used by
:func:`~llm_lab.core.decode.generate.stream` (and ``generate`` with stop strings) and by the server's scheduler.
"""

from __future__ import annotations

import codecs
from typing import Protocol

__all__ = ["RowText"]


class _ByteTokenizer(Protocol):
    """What decoding needs from a tokenizer (``CharTokenizer`` and ``SubwordTokenizer`` both provide it)."""

    def encode(self, text: str) -> list[int]: ...

    def decode_bytes(self, ids: list[int]) -> bytes: ...


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
