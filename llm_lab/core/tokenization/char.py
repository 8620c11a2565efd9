"""``CharTokenizer``: one id per character, ids in sorted character order.

Files: ``<directory>/vocab.json`` (character -> id, ASCII-escaped JSON so any character survives) and
``<directory>/tokenizer_config.json`` (``{"type": "char", "unknown": "error"|"unk", "unk_token_id": ...,
"special_tokens": {...}}``).

Special tokens (the chat format's role and turn-end tokens) are reserved ids after the characters (and after the
unknown id): ``decode`` writes their text, ``encode`` never produces them from text, so typed text cannot forge one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from llm_lab.core.tokenization.base import CONFIG_FILE, read_json
from llm_lab.core.tokenization.byte_level import check_errors, text_to_bytes
from llm_lab.core.tokenization.chat_tokens import chat_template_of
from llm_lab.utils.io import atomic_write_json, atomic_write_text

__all__ = ["UNKNOWN_POLICIES", "CharTokenizer"]

UnknownPolicy = Literal["error", "unk"]
UNKNOWN_POLICIES: tuple[str, ...] = ("error", "unk")
VOCAB_FILE = "vocab.json"
UNK_TEXT = "\ufffd"  # what the unknown id decodes to (U+FFFD REPLACEMENT CHARACTER)


class CharTokenizer:
    """Character-level tokenizer.

    ``splits_anywhere``: ``encode(a + b) == encode(a) + encode(b)`` for any cut, so a stream may be cut anywhere.

    Args:
        vocab: character -> id, ids 0..N-1 (``from_text`` builds it from a text).
        unknown: what ``encode`` does with a character outside the vocabulary: "error" (default) raises a
            ``ValueError`` naming the character and its position; "unk" maps it to a reserved id after the
            characters, which decodes to U+FFFD.
        special_tokens: special-token text -> id, the ids right after the characters and the unknown id, in order.
    """

    splits_anywhere: ClassVar[bool] = True

    def __init__(
        self,
        vocab: Mapping[str, int],
        unknown: UnknownPolicy = "error",
        special_tokens: Mapping[str, int] | None = None,
    ) -> None:
        if isinstance(vocab, str):  # the natural first guess, CharTokenizer(text)
            raise ValueError(
                "CharTokenizer(vocab) takes a mapping of characters to ids; to build one from text use "
                "CharTokenizer.from_text(text)"
            )
        if unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown must be one of {list(UNKNOWN_POLICIES)}, got {unknown!r}")
        bad = next((ch for ch in vocab if not isinstance(ch, str) or len(ch) != 1), None)
        if bad is not None:
            raise ValueError(f"CharTokenizer vocab keys must be single characters, got {bad!r}")
        ids = list(vocab.values())
        all_ints = all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
        if not all_ints or sorted(ids) != list(range(len(ids))):
            raise ValueError(f"CharTokenizer vocab ids must be 0..{len(vocab) - 1}, each used once")
        self.unknown: UnknownPolicy = unknown
        self._stoi: dict[str, int] = dict(vocab)
        self._itos: list[str] = [""] * len(vocab)
        for ch, i in vocab.items():
            self._itos[i] = ch
        self.unk_token_id: int | None = len(vocab) if unknown == "unk" else None
        if self.unk_token_id is not None:
            self._itos.append(UNK_TEXT)
        specials = dict(special_tokens or {})
        first = len(self._itos)
        if sorted(specials.values()) != list(range(first, first + len(specials))) or not all(
            isinstance(t, str) and len(t) > 1 for t in specials
        ):
            raise ValueError(
                f"CharTokenizer special tokens must be texts of 2+ characters with the ids {first}.."
                f"{first + len(specials) - 1} (right after the characters), got {specials}"
            )
        self._special_tokens = specials
        self._itos += sorted(specials, key=specials.__getitem__)

    @classmethod
    def from_text(cls, text: str, unknown: UnknownPolicy = "error") -> CharTokenizer:
        """Vocabulary of the distinct characters of ``text``, ids in sorted (code point) order."""
        if not isinstance(text, str):
            raise ValueError(f"from_text takes a str, got {type(text).__name__}")
        if not text:
            raise ValueError("cannot build a CharTokenizer from an empty text")
        return cls({ch: i for i, ch in enumerate(sorted(set(text)))}, unknown)

    @property
    def vocab_size(self) -> int:
        """Number of ids, the unknown id included when ``unknown="unk"``."""
        return len(self._itos)

    @property
    def vocab(self) -> dict[str, int]:
        return dict(self._stoi)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    @property
    def eot_token_id(self) -> int | None:
        return None

    @property
    def chat_template(self) -> str | None:
        """The chat format's Jinja template when this tokenizer holds the chat tokens, else None."""
        return chat_template_of(self._special_tokens)

    def __repr__(self) -> str:
        specials = f", special_tokens={len(self._special_tokens)}" if self._special_tokens else ""
        return f"CharTokenizer(vocab_size={self.vocab_size}, unknown={self.unknown!r}{specials})"

    def encode(self, text: str) -> list[int]:
        """One id per character; unknown characters follow the ``unknown`` policy."""
        if not isinstance(text, str):
            raise ValueError(f"encode takes a str, got {type(text).__name__}")
        stoi = self._stoi
        try:
            return [stoi[ch] for ch in text]
        except KeyError:
            pass
        if self.unk_token_id is not None:
            unk = self.unk_token_id
            return [stoi.get(ch, unk) for ch in text]
        pos = next(i for i, ch in enumerate(text) if ch not in stoi)
        raise ValueError(
            f"character {text[pos]!r} at position {pos} is not in the vocabulary of this CharTokenizer "
            "(build it from a text that contains it, or use unknown='unk')"
        )

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def _chars(self, ids: Iterable[int]) -> list[str]:
        itos = self._itos
        ids = list(ids)
        if ids and (min(ids) < 0 or max(ids) >= len(itos)):
            bad = next(i for i in ids if not 0 <= i < len(itos))
            raise ValueError(f"token id {bad} is out of range for a vocabulary of {len(itos)} ids")
        return [itos[i] for i in ids]

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of ``ids``. ``errors`` is checked like ``SubwordTokenizer``'s but has nothing to act on: one id is
        one whole character, so no id sequence cuts a character."""
        check_errors(errors)
        return "".join(self._chars(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """UTF-8 bytes of the decoded text."""
        return text_to_bytes(self.decode(ids))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``vocab.json`` and ``tokenizer_config.json`` into ``directory`` (atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # ensure_ascii=True: a lone surrogate or control character must survive the file as an escape.
        atomic_write_text(directory / VOCAB_FILE, json.dumps(self._stoi, ensure_ascii=True, indent=0) + "\n")
        atomic_write_json(directory / CONFIG_FILE, {
            "type": "char", "unknown": self.unknown, "unk_token_id": self.unk_token_id,
            "vocab_size": self.vocab_size, "special_tokens": self._special_tokens,
            "chat_template": self.chat_template,
        })
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> CharTokenizer:
        """Read a tokenizer written by :meth:`save`."""
        directory = Path(directory)
        vocab_path, config_path = directory / VOCAB_FILE, directory / CONFIG_FILE
        for path in (vocab_path, config_path):
            if not path.is_file():
                raise FileNotFoundError(f"tokenizer file not found: {path}")
        config: dict[str, Any] = read_json(config_path)
        if config.get("type") != "char":
            raise ValueError(f"{config_path}: type is {config.get('type')!r}, expected 'char'")
        vocab = read_json(vocab_path)
        if not isinstance(vocab, dict):
            raise ValueError(f"{vocab_path}: expected a JSON object mapping characters to ids")
        specials = config.get("special_tokens") or {}
        if not isinstance(specials, dict):
            raise ValueError(f"{config_path}: special_tokens must be an object mapping texts to ids")
        try:
            tok = cls(vocab, config.get("unknown", "error"), specials)
        except ValueError as exc:
            raise ValueError(f"{directory}: {exc}") from exc
        if config.get("unk_token_id") != tok.unk_token_id:
            raise ValueError(f"{config_path}: unk_token_id {config.get('unk_token_id')} does not match the vocabulary "
                             f"(expected {tok.unk_token_id})")
        return tok

