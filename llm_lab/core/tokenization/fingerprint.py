"""A tokenizer's fingerprint: a hash of what it means (which text each id stands for, how text is split), not
of its files.

Two tokenizers with the same fingerprint encode and decode every text the same way, whatever their files look
like; swapping two ids in ``vocab.json`` changes it. A prepared corpus (``meta.json``), a run (``run.json``) and a
package manifest record it, so token ids are never read with a tokenizer other than the one that made them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["tokenizer_fingerprint"]


def _update(stream: list[bytes], *parts: bytes) -> None:
    for part in parts:  # length-prefixed, so no two different sequences hash the same stream
        stream += (len(part).to_bytes(8, "little"), part)


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """A sha256 (hex) over the tokenizer's kind, the bytes of every id in order, the end-of-text id, and what
    decides how text is split into ids: BPE merges and pattern, a character tokenizer's unknown-character policy,
    the special tokens.

    ``None`` for an object without ``decode_bytes`` (a stand-in tokenizer): nothing can be checked then.
    """
    decode_bytes = getattr(tokenizer, "decode_bytes", None)
    if decode_bytes is None:
        return None
    stream: list[bytes] = []  # hashed in one call at the end: the same digest as part by part, several times faster
    _update(stream, type(tokenizer).__name__.encode(), f"{tokenizer.vocab_size} {tokenizer.eot_token_id}".encode())
    for i in range(tokenizer.vocab_size):
        _update(stream, decode_bytes([i]))
    for left, right in getattr(tokenizer, "merges", ()):
        _update(stream, bytes(left), bytes(right))
    _update(stream, str(getattr(tokenizer, "pattern", "")).encode())
    _update(stream, repr(getattr(tokenizer, "unk_token_id", None)).encode())
    specials = dict(getattr(tokenizer, "special_tokens", {}) or {})
    _update(stream, json.dumps(sorted(specials.items())).encode())
    return hashlib.sha256(b"".join(stream)).hexdigest()
