"""Tokenizers: ``CharTokenizer`` (one id per character) and ``SubwordTokenizer`` (byte-level BPE).

Both save into a directory with a ``tokenizer_config.json`` whose ``"type"`` ("char" or "bpe") tells
:func:`load_tokenizer` which class reads it back.
"""

from __future__ import annotations

import os
from pathlib import Path

from llm_lab.core.tokenization.base import CONFIG_FILE, Tokenizer, read_json
from llm_lab.core.tokenization.bpe import EOT_TOKEN, SubwordTokenizer
from llm_lab.core.tokenization.byte_level import GPT2_PATTERN, GPT4_PATTERN, PATTERNS
from llm_lab.core.tokenization.char import CharTokenizer

__all__ = [
    "EOT_TOKEN",
    "GPT2_PATTERN",
    "GPT4_PATTERN",
    "PATTERNS",
    "TOKENIZERS",
    "CharTokenizer",
    "SubwordTokenizer",
    "Tokenizer",
    "load_tokenizer",
]

TOKENIZERS: dict[str, type[CharTokenizer] | type[SubwordTokenizer]] = {"char": CharTokenizer, "bpe": SubwordTokenizer}


def load_tokenizer(directory: str | os.PathLike) -> CharTokenizer | SubwordTokenizer:
    """Load the tokenizer saved in ``directory``, picking the class from ``tokenizer_config.json``'s ``"type"``.

    A directory with only GPT-2-format ``vocab.json`` + ``merges.txt`` (no config) loads as a ``SubwordTokenizer``.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
            return SubwordTokenizer.load(directory)
        raise FileNotFoundError(f"no tokenizer in {directory}: {CONFIG_FILE} is missing")
    config = read_json(config_path)
    kind = config.get("type") if isinstance(config, dict) else None
    if kind not in TOKENIZERS:
        raise ValueError(f"{config_path}: unknown tokenizer type {kind!r}; expected one of {sorted(TOKENIZERS)}")
    return TOKENIZERS[kind].load(directory)
