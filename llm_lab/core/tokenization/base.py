"""What every tokenizer offers (the ``Tokenizer`` protocol) and the small file helpers they share."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["CONFIG_FILE", "Tokenizer", "read_json", "tokenizer_fingerprint"]

CONFIG_FILE = "tokenizer_config.json"  # {"type": "char" | "bpe", ...}; load_tokenizer dispatches on "type"


@runtime_checkable
class Tokenizer(Protocol):
    """The interface the data pipeline, packages and decoding code rely on."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_token_id(self) -> int | None: ...

    @property
    def special_tokens(self) -> dict[str, int]: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str: ...

    def decode_bytes(self, ids: Iterable[int]) -> bytes: ...

    def save(self, directory: str | os.PathLike) -> Path: ...


def read_json(path: Path) -> Any:
    """``json.load`` with a ``ValueError`` that names the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """A sha256 of what every id means: the bytes of each id in order, and the end-of-text id.

    Two tokenizers with the same fingerprint turn the same ids into the same text, so token ids prepared with one
    train a model for the other. A tokenizer whose ids were permuted (same vocabulary, other order) differs.
    ``None`` for an object without ``decode_bytes`` (a stand-in tokenizer): nothing can be checked then.
    """
    decode_bytes = getattr(tokenizer, "decode_bytes", None)
    if decode_bytes is None:
        return None
    digest = hashlib.sha256(f"vocab_size={tokenizer.vocab_size} eot={tokenizer.eot_token_id}\n".encode())
    for i in range(tokenizer.vocab_size):
        piece = decode_bytes([i])
        digest.update(len(piece).to_bytes(8, "little"))
        digest.update(piece)
    return digest.hexdigest()
