"""Shared inputs for the tokenizer tests: a Unicode stress string, standard-library sources, a training cache."""

from __future__ import annotations

import json
import os
import string
import textwrap
from pathlib import Path

import pytest

from llm_lab.core.tokenization import SubwordTokenizer

# Everything that tends to break byte-level tokenizers, except lone surrogates (no reference library accepts them;
# they get their own round-trip test).
STRESS = (
    "Hello, 世界! 你好吗？日本語のテキスト、한국어 텍스트.\n"
    "Family: 👩‍👩‍👧‍👦, flags 🇺🇸🇯🇵, skin tones 👋🏽, keycap 1️⃣, 🤷‍♀️\n"
    "Combining: e\u0301 a\u0308 n\u0303 Z\u0337\u0335\u0328a\u0336l\u0338g\u0335o\u0334, precomposed é ä ñ\r\n"
    "Windows line\r\nends\r\n\r\n"
    "Scripts: Ελληνικά, русский, עברית, العربية, हिन्दी, ไทย, ქართული\n"
    "Whitespace:\t\ttabs,    four spaces,                                 a long run\n\n\n\n"
    "   leading and trailing   \n"
    "Digits: 0 12 345 6789 1234567890 3.14159 1,000,000 ٣٤٥ ४५६ ½ Ⅻ\n"
    "Contractions: I'm you're he's we'll they've I'd DON'T Can'T\n"
    "Controls: \x00\x01\x07\x1b[31m\x7f \u200b\u200d\ufeff zero-width, nbsp\u00a0here, \u2028 line sep\n"
    "Symbols: ∑∫√∞ ≠ ≤≥ → ← ⇒ ™ © ® € £ ¥ ₿ «quotes» „deutsch“ ‘single’ — – … · •\n"
    "Code: def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\tif x != y: pass\n"
    "<|endoftext|> literal special text, and <|endoftext|><|endoftext|> twice\n"
    "Emoji run 😀😃😄😁😆😅🤣😂 and astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈 𓀀\n"
    "end without newline"
)


def stdlib_sources() -> dict[str, str]:
    """A few standard-library source files (always present where Python is)."""
    files = [Path(os.__file__), Path(string.__file__), Path(textwrap.__file__)]
    files += sorted(Path(json.__file__).parent.glob("*.py"))
    root = Path(os.__file__).parent
    return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in files}


@pytest.fixture(scope="session")
def stdlib_texts() -> dict[str, str]:
    return stdlib_sources()


@pytest.fixture(scope="session")
def stress_text() -> str:
    return STRESS


_TRAINED: dict[tuple, SubwordTokenizer] = {}


@pytest.fixture(scope="session")
def trained():
    """``trained(texts_key, texts, vocab_size, pattern)``: train once per session and reuse (training is pure)."""

    def get(key: str, texts, vocab_size: int, pattern: str = "gpt2") -> SubwordTokenizer:
        k = (key, vocab_size, pattern)
        if k not in _TRAINED:
            _TRAINED[k] = SubwordTokenizer.train(texts, vocab_size, pattern=pattern, show_progress=False)
        return _TRAINED[k]

    return get
