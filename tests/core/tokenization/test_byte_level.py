"""The byte-to-unicode map, the split patterns, and exact UTF-8 round trips with lone surrogates."""

from __future__ import annotations

import pytest

from llm_lab.core.tokenization.byte_level import (
    bytes_to_text,
    bytes_to_unicode,
    compile_pattern,
    resolve_pattern,
    text_to_bytes,
    unicode_to_bytes,
)


def test_bytes_to_unicode_is_gpt2s_map():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("!")] == "!" and table[0] == "Ā"
    assert all(not ch.isspace() and ch.isprintable() for ch in table.values())
    assert {b: unicode_to_bytes()[ch] for b, ch in table.items()} == {b: b for b in range(256)}


def test_patterns_resolve_by_name_or_regex():
    name, gpt2 = resolve_pattern("gpt2")
    assert name == "gpt2" and resolve_pattern(gpt2) == ("gpt2", gpt2)
    assert resolve_pattern(r"\S+|\s+") == ("custom", r"\S+|\s+")
    # GPT-2 keeps one space on the next word and splits 1234 whole; GPT-4 groups digits by three.
    text = "Hello   world 12345\n\n"
    assert compile_pattern(gpt2).findall(text) == ["Hello", "  ", " world", " 12345", "\n\n"]
    assert compile_pattern(resolve_pattern("gpt4")[1]).findall(text) == ["Hello", "  ", " world", " ", "123", "45",
                                                                        "\n\n"]


def test_lone_surrogates_round_trip_and_broken_bytes_follow_errors():
    text = "x\ud800y\udfff"
    data = text_to_bytes(text)
    assert data == b"x\xed\xa0\x80y\xed\xbf\xbf"
    assert bytes_to_text(data) == bytes_to_text(data, "strict") == text
    broken = b"a\xe4\xb8" + data  # first two bytes of a CJK character, then the surrogates
    assert bytes_to_text(broken) == "a\ufffd" + text
    assert bytes_to_text(broken, "ignore") == "a" + text
    with pytest.raises(UnicodeDecodeError):
        bytes_to_text(broken, "strict")
