"""``CharTokenizer``: sorted ids, the unknown-character policies, files."""

from __future__ import annotations

import json

import pytest

from llm_lab.core.tokenization import CharTokenizer, load_tokenizer


def test_ids_are_sorted_unique_characters():
    tok = CharTokenizer.from_text("hello world")
    # sorted(set("hello world")) = [' ', 'd', 'e', 'h', 'l', 'o', 'r', 'w']
    assert tok.vocab == {" ": 0, "d": 1, "e": 2, "h": 3, "l": 4, "o": 5, "r": 6, "w": 7}
    assert tok.vocab_size == 8
    assert tok.encode("hello") == [3, 2, 4, 4, 5]
    assert tok.decode([7, 5, 6, 4, 1]) == "world"
    assert tok.special_tokens == {} and tok.eot_token_id is None


def test_round_trip_and_bytes(small_text, stress_text):
    tok = CharTokenizer.from_text(small_text + stress_text)
    for text in (small_text, stress_text, ""):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert tok.encode_batch(["ab", "ba"]) == [tok.encode("ab"), tok.encode("ba")]


def test_unknown_character_error_names_character_and_position():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"character 'z' at position 3 is not in the vocabulary .*unknown='unk'"):
        tok.encode("abcz")
    with pytest.raises(ValueError, match=r"character '\\n' at position 1 is not in the vocabulary"):
        tok.encode("a\nb")


def test_unknown_character_maps_to_reserved_id():
    tok = CharTokenizer.from_text("abc", unknown="unk")
    assert tok.unk_token_id == 3 and tok.vocab_size == 4
    assert tok.encode("abzc") == [0, 1, 3, 2]
    assert tok.decode([0, 3]) == "a\ufffd"


def test_save_load_round_trip(tmp_path):
    text = "tab\tnewline\n nul\x00 surrogate\ud800 emoji👋"
    for unknown in ("error", "unk"):
        tok = CharTokenizer.from_text(text, unknown=unknown)
        directory = tok.save(tmp_path / unknown)
        assert json.loads((directory / "tokenizer_config.json").read_text())["type"] == "char"
        for loaded in (CharTokenizer.load(directory), load_tokenizer(directory)):
            assert isinstance(loaded, CharTokenizer)
            assert loaded.vocab == tok.vocab and loaded.unknown == unknown
            assert loaded.unk_token_id == tok.unk_token_id
            assert loaded.decode(loaded.encode(text)) == text


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="cannot build a CharTokenizer from an empty text"):
        CharTokenizer.from_text("")
    with pytest.raises(ValueError, match=r"unknown must be one of \['error', 'unk'\], got 'skip'"):
        CharTokenizer.from_text("abc", unknown="skip")
    with pytest.raises(ValueError, match=r"vocab keys must be single characters, got 'ab'"):
        CharTokenizer({"ab": 0})
    with pytest.raises(ValueError, match=r"vocab ids must be 0..1, each used once"):
        CharTokenizer({"a": 0, "b": 2})
    with pytest.raises(ValueError, match=r"vocab ids must be 0..1, each used once"):
        CharTokenizer({"a": 0, "b": "1"})  # a hand-edited vocab.json: not a TypeError from sorting
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"token id 3 is out of range for a vocabulary of 3 ids"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match=r"token id -1 is out of range"):
        tok.decode([-1])
    with pytest.raises(ValueError, match=r"errors must be one of \['strict', 'replace', 'ignore', "):
        tok.decode([0], errors="surrogateescape")
    directory = tok.save(tmp_path)
    (directory / "vocab.json").write_text('{"a": 0, "b": 0}')
    with pytest.raises(ValueError, match=r"vocab ids must be 0..1, each used once"):
        CharTokenizer.load(directory)
    (directory / "tokenizer_config.json").write_text('{"type": "bpe"}')
    with pytest.raises(ValueError, match=r"tokenizer_config.json: type is 'bpe', expected 'char'"):
        CharTokenizer.load(directory)


def test_text_instead_of_a_vocabulary_points_to_from_text():
    with pytest.raises(ValueError, match=r"to build one from text use CharTokenizer\.from_text\(text\)"):
        CharTokenizer("hello world")
