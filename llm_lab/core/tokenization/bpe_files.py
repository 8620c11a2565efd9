"""The files of a byte-level BPE tokenizer, in GPT-2's format so that HF ``tokenizers`` and tiktoken read them too.

    <directory>/vocab.json             token string (GPT-2 byte-to-unicode form) -> id, special tokens included
    <directory>/merges.txt             "#version: 0.2", then one merge per line: "Ġ t", in rank order
    <directory>/tokenizer_config.json  {"type": "bpe", "pattern": ..., "pattern_regex": ..., "special_tokens": ...}

:func:`write_bpe_files` writes them atomically; :func:`read_bpe_files` reads them back (or GPT-2's own
``vocab.json`` + ``merges.txt``) and checks that they agree, every inconsistency a ``ValueError`` naming the file and,
for ``merges.txt``, the line. :class:`~llm_lab.core.tokenization.bpe.SubwordTokenizer` builds itself from what is read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_lab.core.tokenization.base import CONFIG_FILE, read_json
from llm_lab.core.tokenization.byte_level import token_from_unicode, token_to_unicode, unicode_to_bytes
from llm_lab.utils.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from llm_lab.core.tokenization.bpe import SubwordTokenizer

__all__ = ["FORMAT_VERSION", "MERGES_FILE", "VOCAB_FILE", "check_special_tokens", "read_bpe_files", "write_bpe_files"]

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
MERGES_HEADER = "#version: 0.2"
FORMAT_VERSION = 1


def check_special_tokens(special_tokens: Iterable[str]) -> list[str]:
    """The special tokens as a list, each a non-empty string, none twice, none spelled like a single byte's token."""
    specials = list(special_tokens)
    seen: set[str] = set()
    for s in specials:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
        if s in seen:
            raise ValueError(f"special tokens collide: {s!r} is listed twice")
        seen.add(s)
        if len(s) == 1 and s in unicode_to_bytes():
            raise ValueError(
                f"special token {s!r} collides with the byte-level token of byte {unicode_to_bytes()[s]:#04x} in "
                "vocab.json; use a distinct name such as '<|...|>'"
            )
    return specials


def write_bpe_files(tokenizer: SubwordTokenizer, directory: str | os.PathLike) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` of ``tokenizer`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_json = {token_to_unicode(data): i for data, i in tokenizer.vocab.items()}
    vocab_json.update(tokenizer.special_tokens)
    vocab_json = dict(sorted(vocab_json.items(), key=lambda kv: kv[1]))
    merges = [f"{token_to_unicode(left)} {token_to_unicode(right)}" for left, right in tokenizer.merges]
    lines = [MERGES_HEADER, *merges]
    atomic_write_json(directory / VOCAB_FILE, vocab_json)
    atomic_write_text(directory / MERGES_FILE, "\n".join(lines) + "\n")
    atomic_write_json(directory / CONFIG_FILE, {
        "type": "bpe",
        "format_version": FORMAT_VERSION,
        "pattern": tokenizer.pattern_name,
        "pattern_regex": tokenizer.pattern,
        "special_tokens": tokenizer.special_tokens,
        "vocab_size": tokenizer.vocab_size,
        "chat_template": tokenizer.chat_template,
    })
    return directory


def read_bpe_files(
    directory: str | os.PathLike, default_specials: Iterable[str] = ()
) -> tuple[dict[bytes, int], list[tuple[bytes, bytes]], dict[str, int], str]:
    """``(vocab, merges, special_tokens, pattern)`` from the files in ``directory``, checked against each other.

    Without ``tokenizer_config.json`` the GPT-2 pattern is used and those of ``default_specials`` that
    ``vocab.json`` holds are special.
    """
    directory = Path(directory)
    vocab_path, merges_path, config_path = directory / VOCAB_FILE, directory / MERGES_FILE, directory / CONFIG_FILE
    for path in (vocab_path, merges_path):
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
    config: dict[str, Any] = {}
    if config_path.is_file():
        config = read_json(config_path)
        if config.get("type") != "bpe":
            raise ValueError(f"{config_path}: type is {config.get('type')!r}, expected 'bpe'")
    vocab_json = read_json(vocab_path)
    if not isinstance(vocab_json, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in vocab_json.items()
    ):
        raise ValueError(f"{vocab_path}: expected a JSON object mapping token strings to integer ids")

    if "special_tokens" in config:
        specials = config["special_tokens"]
        if not isinstance(specials, dict):
            raise ValueError(f"{config_path}: special_tokens must be an object mapping text to id")
        check_special_tokens(specials)
        for text, i in specials.items():
            if vocab_json.get(text) != i:
                found = "is missing" if text not in vocab_json else f"has id {vocab_json[text]}"
                raise ValueError(f"{vocab_path} disagrees with {config_path}: special token {text!r} {found}, "
                                 f"expected id {i}")
    else:
        specials = {text: vocab_json[text] for text in default_specials if text in vocab_json}

    vocab: dict[bytes, int] = {}
    for token, i in vocab_json.items():
        if token in specials:
            continue
        data = token_from_unicode(token, str(vocab_path))
        if data in vocab:
            raise ValueError(f"{vocab_path}: token {token!r} appears twice")
        vocab[data] = i

    merges: list[tuple[bytes, bytes]] = []
    produced = {bytes([b]) for b in range(256)}
    with open(merges_path, encoding="utf-8", newline="") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip("\r\n")
            if (lineno == 1 and line.startswith("#version")) or not line:
                continue
            parts = line.split(" ")
            where = f"{merges_path}:{lineno}"
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"{where}: broken line {line!r}: expected two tokens separated by one space")
            left, right = (token_from_unicode(p, where) for p in parts)
            for part, text in ((left, parts[0]), (right, parts[1])):
                if part not in produced:
                    raise ValueError(f"{where}: unknown symbol {text!r}: neither a byte nor made by an earlier "
                                     "merge")
            merged = left + right
            if merged not in vocab:
                raise ValueError(f"{vocab_path} disagrees with {merges_path}: line {lineno} makes "
                                 f"{parts[0] + parts[1]!r}, which vocab.json lacks")
            produced.add(merged)
            merges.append((left, right))
    orphans = sorted((i, data) for data, i in vocab.items() if data not in produced)
    if orphans:
        i, data = orphans[0]
        raise ValueError(f"{vocab_path} disagrees with {merges_path}: token {token_to_unicode(data)!r} (id {i}) is "
                         "neither a byte nor made by any merge")
    pattern = config.get("pattern_regex", config.get("pattern", "gpt2"))
    return vocab, merges, specials, pattern
