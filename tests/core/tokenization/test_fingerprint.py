"""A tokenizer's fingerprint is stored in corpora, runs and packages: how it is computed may change, its value not."""

from __future__ import annotations

import hashlib
import json

from llm_lab.core.tokenization import CharTokenizer, SubwordTokenizer
from llm_lab.core.tokenization.fingerprint import tokenizer_fingerprint

TEXT = "the quick brown fox jumps over the lazy dog. to be, or not to be: that is the question.\n" * 20


def reference_fingerprint(tokenizer) -> str:
    """The definition, part by part, as the first version hashed it."""
    digest = hashlib.sha256()

    def update(*parts: bytes) -> None:
        for part in parts:
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)

    update(type(tokenizer).__name__.encode(), f"{tokenizer.vocab_size} {tokenizer.eot_token_id}".encode())
    for i in range(tokenizer.vocab_size):
        update(tokenizer.decode_bytes([i]))
    for left, right in getattr(tokenizer, "merges", ()):
        update(bytes(left), bytes(right))
    update(str(getattr(tokenizer, "pattern", "")).encode())
    update(repr(getattr(tokenizer, "unk_token_id", None)).encode())
    update(json.dumps(sorted(dict(getattr(tokenizer, "special_tokens", {}) or {}).items())).encode())
    return digest.hexdigest()


def test_the_fingerprint_is_the_same_digest_as_the_part_by_part_definition():
    bpe = SubwordTokenizer.train(TEXT, 300, show_progress=False)
    char = CharTokenizer.from_text(TEXT)
    for tokenizer in (bpe, char):
        assert tokenizer_fingerprint(tokenizer) == reference_fingerprint(tokenizer)
    assert tokenizer_fingerprint(bpe) != tokenizer_fingerprint(char)
