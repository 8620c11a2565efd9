"""A tokenizer's fingerprint: a hash of what it means (which text each id stands for), not of its files.

Two tokenizers with the same fingerprint encode and decode every text the same way, whatever their files look
like; swapping two ids in ``vocab.json`` changes it. A package manifest records it, so a tokenizer edited or
permuted after the model was trained is refused instead of silently producing garbage.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["tokenizer_fingerprint"]


def _update(digest: Any, *parts: bytes) -> None:
    for part in parts:  # length-prefixed, so no two different sequences hash the same stream
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """``"sha256:<hex>"`` over the tokenizer's kind, every id's bytes, its merges, pattern and special tokens."""
    digest = hashlib.sha256()
    _update(digest, type(tokenizer).__name__.encode())
    if hasattr(tokenizer, "merges"):  # byte-level BPE: id -> bytes, merge order, pre-tokenisation pattern
        for i in range(tokenizer.vocab_size):
            _update(digest, tokenizer.token_bytes(i))
        for left, right in tokenizer.merges:
            _update(digest, left, right)
        _update(digest, str(getattr(tokenizer, "pattern", "")).encode())
    else:  # characters: the vocabulary and the unknown-character policy
        for ch, i in sorted(tokenizer.vocab.items(), key=lambda kv: kv[1]):
            _update(digest, str(i).encode(), ch.encode("utf-8", "surrogatepass"))
        _update(digest, repr(getattr(tokenizer, "unk_token_id", None)).encode())
    specials = dict(getattr(tokenizer, "special_tokens", {}) or {})
    _update(digest, json.dumps(sorted(specials.items())).encode())
    return "sha256:" + digest.hexdigest()
