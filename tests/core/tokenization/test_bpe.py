"""``SubwordTokenizer`` behaviour: exact round trips, special tokens, files, and every bad input named clearly."""

from __future__ import annotations

import json
import re

import pytest

from llm_lab.core.tokenization import SubwordTokenizer, load_tokenizer
from llm_lab.core.tokenization import bpe as bpe_module
from llm_lab.core.tokenization.byte_level import token_to_unicode


@pytest.fixture(scope="module")
def tok(stress_text) -> SubwordTokenizer:
    text = "the quick brown fox jumps over the lazy dog; the dog sleeps. " * 20 + stress_text
    tok = SubwordTokenizer.train(text, 400, min_frequency=1, show_progress=False)
    assert tok.vocab_size == 400
    return tok


@pytest.fixture
def saved(tok, tmp_path):
    tok.save(tmp_path)
    return tmp_path


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("text", [
    "", " ", "\n", "\r\n\r\n", "    ", "a", "ab", "hello world", "ﬁ", "e\u0301", "👩‍👩‍👧‍👦", "\x00\x00",
    "<|endoftext|>", "日本語", "  trailing   ", "\t\tx\n\n\ny",
])
def test_round_trip_small_strings(tok, text):
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode_bytes(tok.encode(text)) == text.encode("utf-8")


def test_round_trip_stress_and_stdlib(tok, stress_text, stdlib_texts):
    for text in [stress_text, *stdlib_texts.values()]:
        assert tok.decode(tok.encode(text), errors="strict") == text


def test_lone_surrogates_round_trip(tok):
    """A Python str may hold lone surrogates; they are encoded as their 3-byte form and come back exactly."""
    text = "a\ud800b\udfff \udc80\ud83d\ude00"  # the last two are a surrogate *pair* as separate code points
    ids = tok.encode(text)
    assert tok.decode_bytes(ids) == text.encode("utf-8", "surrogatepass")
    assert tok.decode(ids) == text
    assert tok.decode(ids, errors="strict") == text


def test_decode_cut_multibyte_character_follows_errors(tok):
    ids = tok.encode("é")  # two bytes
    one = [tok.encode(" ")[0], *[i for i in range(256) if bytes([i]) == "é".encode()[:1]]]
    assert tok.decode_bytes(ids) == b"\xc3\xa9"
    assert tok.decode(one) == " \ufffd"
    assert tok.decode(one, errors="ignore") == " "
    assert tok.decode(one, errors="backslashreplace") == " \\xc3"
    with pytest.raises(UnicodeDecodeError):
        tok.decode(one, errors="strict")
    with pytest.raises(ValueError, match=r"errors must be one of \['strict', 'replace', 'ignore', "):
        tok.decode(ids, errors="surrogateescape")


def test_decode_accepts_any_int_sequence(tok):
    ids = tok.encode("hello world")
    assert tok.decode(tuple(ids)) == tok.decode(iter(ids)) == "hello world"


# ---------------------------------------------------------------- special tokens


def test_special_token_text_is_plain_text_by_default(tok):
    eot = tok.eot_token_id
    text = "one<|endoftext|>two"
    plain = tok.encode(text)
    assert eot not in plain
    assert tok.decode(plain) == text
    assert tok.encode(text, allowed_special="all") == [*tok.encode("one"), eot, *tok.encode("two")]
    assert tok.encode(text, allowed_special={"<|endoftext|>"}) == tok.encode(text, allowed_special="all")
    assert tok.encode(text, allowed_special=set()) == plain
    assert tok.decode(tok.encode(text, allowed_special="all")) == text


def test_several_special_tokens_longest_first():
    tok = SubwordTokenizer.train("abc abc", 300, special_tokens=("<|a|>", "<|a|><|b|>", "<|endoftext|>"),
                                 show_progress=False)
    assert tok.merges == [(b"a", b"b"), (b"ab", b"c")]  # pairs seen twice; then only (" ", abc) once: stop
    assert tok.special_tokens == {"<|a|>": 258, "<|a|><|b|>": 259, "<|endoftext|>": 260}
    assert tok.encode("x<|a|><|b|><|a|>", allowed_special="all") == [ord("x"), 259, 258]
    assert tok.encode("<|a|><|b|>", allowed_special={"<|a|>"}) == [258, *tok.encode("<|b|>")]


def test_no_special_tokens():
    tok = SubwordTokenizer.train("abc abc abc", 258, special_tokens=(), show_progress=False)
    assert tok.special_tokens == {} and tok.eot_token_id is None and tok.vocab_size == 258


def test_encode_batch(tok):
    texts = ["a b", "<|endoftext|>", ""]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, allowed_special="all")[1] == [tok.eot_token_id]


# ---------------------------------------------------------------- cache


def test_cache_is_bounded_and_never_changes_results(tok, monkeypatch, stress_text):
    expected = tok.encode(stress_text)
    tok.clear_cache()
    monkeypatch.setattr(bpe_module, "_CACHE_MAX_ENTRIES", 8)
    assert tok.encode(stress_text) == expected
    assert len(tok._cache) <= 8
    tok.clear_cache()


# ---------------------------------------------------------------- files


def test_save_load_round_trip(tok, saved, stress_text):
    assert sorted(p.name for p in saved.iterdir()) == ["merges.txt", "tokenizer_config.json", "vocab.json"]
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["type"] == "bpe" and config["pattern"] == "gpt2"
    assert config["special_tokens"] == {"<|endoftext|>": 399} and config["vocab_size"] == 400
    merges = (saved / "merges.txt").read_text().splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + len(tok.merges)
    vocab = json.loads((saved / "vocab.json").read_text())
    assert vocab["Ġ"] == 32 and vocab["Ċ"] == 10 and vocab["<|endoftext|>"] == 399

    for loaded in (SubwordTokenizer.load(saved), load_tokenizer(saved)):
        assert isinstance(loaded, SubwordTokenizer)
        assert loaded.merges == tok.merges and loaded.special_tokens == tok.special_tokens
        assert loaded.vocab == tok.vocab and loaded.pattern == tok.pattern
        assert loaded.encode(stress_text, allowed_special="all") == tok.encode(stress_text, allowed_special="all")


def test_gpt4_and_custom_patterns_survive_save_load(tmp_path, small_text):
    for pattern in ("gpt4", r"\p{L}+|\p{N}+|\s+|[^\s\p{L}\p{N}]+"):
        tok = SubwordTokenizer.train(small_text, 300, pattern=pattern, show_progress=False)
        loaded = SubwordTokenizer.load(tok.save(tmp_path / str(abs(hash(pattern)))))
        assert (loaded.pattern_name, loaded.pattern) == (tok.pattern_name, tok.pattern)
        assert loaded.encode(small_text) == tok.encode(small_text)


def test_gpt2_files_without_config_load(saved, tok):
    """Plain GPT-2 files (no tokenizer_config.json): GPT-2 pattern, <|endoftext|> special when present."""
    (saved / "tokenizer_config.json").unlink()
    loaded = load_tokenizer(saved)
    assert loaded.special_tokens == {"<|endoftext|>": 399}
    assert loaded.encode("the dog") == tok.encode("the dog")


def test_hf_tokenizer_json_path_forms(tok, tmp_path):
    assert tok.to_hf_tokenizer_json(tmp_path) == tmp_path / "tokenizer.json"
    assert tok.to_hf_tokenizer_json(tmp_path / "x.json") == tmp_path / "x.json"
    data = json.loads((tmp_path / "x.json").read_text())
    assert data["model"]["type"] == "BPE" and len(data["model"]["merges"]) == len(tok.merges)
    assert data["added_tokens"][0]["content"] == "<|endoftext|>" and data["added_tokens"][0]["special"] is True


# ---------------------------------------------------------------- bad input


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match=r"vocab_size=200 is too small: .* 256 byte tokens \+ 1 special token\(s\) "
                                         "= 257"):
        SubwordTokenizer.train("hello", 200)
    with pytest.raises(ValueError, match=r"vocab_size=257 is too small: .* = 258"):
        SubwordTokenizer.train("hello", 257, special_tokens=("<|a|>", "<|b|>"))
    with pytest.raises(ValueError, match=r"vocab_size must be an int, got 300.0"):
        SubwordTokenizer.train("hello", 300.0)


def test_empty_corpus(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for texts in ("", [], ["", ""], empty, "<|endoftext|>"):
        with pytest.raises(ValueError, match="the training corpus is empty"):
            SubwordTokenizer.train(texts, 300)


def test_bad_training_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="training file not found: .*missing.txt"):
        SubwordTokenizer.train(tmp_path / "missing.txt", 300)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt: not valid UTF-8 at byte 3"):
        SubwordTokenizer.train(bad, 300)
    with pytest.raises(ValueError, match="texts must hold str or pathlib.Path items, got int"):
        SubwordTokenizer.train(["ok", 3], 300)
    with pytest.raises(ValueError, match="min_frequency must be a non-negative int, got -1"):
        SubwordTokenizer.train("abc", 300, min_frequency=-1)


def test_bad_patterns():
    with pytest.raises(ValueError, match=r"unknown pattern name 'gpt3'; use one of \['gpt2', 'gpt4'\] or a regex"):
        SubwordTokenizer.train("abc", 300, pattern="gpt3")
    with pytest.raises(ValueError, match=r"pattern '\(\?P<' is not a valid regex"):
        SubwordTokenizer.train("abc", 300, pattern="(?P<")
    with pytest.raises(ValueError, match=r"matches the empty string"):
        SubwordTokenizer.train("abc", 300, pattern=r"\w*")
    with pytest.raises(ValueError, match=r"does not match the character ' ' at position 3"):
        SubwordTokenizer.train("abc def", 300, pattern=r"\p{L}+")
    tok = SubwordTokenizer.train("abc abc", 300, pattern=r"\p{L}+|\s", show_progress=False)
    with pytest.raises(ValueError, match=r"does not match the character '!' at position 1"):
        tok.encode("a!")


def test_special_tokens_that_collide():
    with pytest.raises(ValueError, match=r"special tokens collide: '<\|x\|>' is listed twice"):
        SubwordTokenizer.train("abc", 300, special_tokens=("<|x|>", "<|x|>"))
    with pytest.raises(ValueError, match=r"special token '!' collides with the byte-level token of byte 0x21"):
        SubwordTokenizer.train("abc", 300, special_tokens=("!",))
    with pytest.raises(ValueError, match=r"special tokens must be non-empty strings, got ''"):
        SubwordTokenizer.train("abc", 300, special_tokens=("",))
    vocab = {bytes([b]): b for b in range(256)}
    with pytest.raises(ValueError, match=r"token ids must be 0..256, each used once: id 255 is used twice"):
        SubwordTokenizer(vocab, [], {"<|endoftext|>": 255})
    with pytest.raises(ValueError, match=r"special token 'Ġa' collides with a regular token of the same name"):
        SubwordTokenizer({**vocab, b" a": 256}, [(b" ", b"a")], {"Ġa": 257})


def test_bad_encode_and_decode_arguments(tok):
    with pytest.raises(ValueError, match=r"allowed_special names unknown special tokens \['<\|nope\|>'\]"):
        tok.encode("x", allowed_special={"<|nope|>"})
    with pytest.raises(ValueError, match=r"allowed_special must be 'all', 'none' or a set of special tokens"):
        tok.encode("x", allowed_special="<|endoftext|>")
    with pytest.raises(ValueError, match="encode takes a str, got bytes"):
        tok.encode(b"x")
    with pytest.raises(ValueError, match=r"token id 400 is out of range for a vocabulary of 400 ids \(0..399\)"):
        tok.decode([1, 400])
    with pytest.raises(ValueError, match=r"token id -1 is out of range"):
        tok.decode([5, -1])


def _replace_line(path, lineno, new):
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[lineno - 1] = new
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_merges_file_with_a_broken_line(saved):
    _replace_line(saved / "merges.txt", 3, "Ġ")
    with pytest.raises(ValueError, match=re.escape(f"{saved / 'merges.txt'}:3: broken line 'Ġ': expected two")):
        SubwordTokenizer.load(saved)
    _replace_line(saved / "merges.txt", 3, "a  b")
    with pytest.raises(ValueError, match=r"merges.txt:3: broken line 'a  b'"):
        SubwordTokenizer.load(saved)


def test_merges_file_with_an_unknown_symbol(saved):
    _replace_line(saved / "merges.txt", 4, "Ġ zzzq")
    with pytest.raises(ValueError, match=r"merges.txt:4: unknown symbol 'zzzq': neither a byte nor made by an earlier"):
        SubwordTokenizer.load(saved)
    _replace_line(saved / "merges.txt", 4, "Ġ ☃")
    with pytest.raises(ValueError, match=r"merges.txt:4: unknown symbol '☃': character '☃' is not in GPT-2's"):
        SubwordTokenizer.load(saved)


def test_vocab_json_that_disagrees_with_merges(saved, tok):
    vocab_path = saved / "vocab.json"
    vocab = json.loads(vocab_path.read_text())
    first_merge = "".join(token_to_unicode(b) for b in tok.merges[0])

    missing = {k: v for k, v in vocab.items() if k != first_merge}
    vocab_path.write_text(json.dumps(missing))
    with pytest.raises(ValueError, match=rf"vocab.json disagrees with .*merges.txt: line 2 makes '{first_merge}', "
                                         "which vocab.json lacks"):
        SubwordTokenizer.load(saved)

    extra = {**vocab, "zzzq": len(vocab)}
    vocab_path.write_text(json.dumps(extra))
    with pytest.raises(ValueError, match=rf"vocab.json disagrees with .*merges.txt: token 'zzzq' \(id {len(vocab)}\) "
                                         "is neither a byte nor made by any merge"):
        SubwordTokenizer.load(saved)

    moved = {**vocab, "<|endoftext|>": 5}
    vocab_path.write_text(json.dumps(moved))
    with pytest.raises(ValueError, match=r"vocab.json disagrees with .*tokenizer_config.json: special token "
                                         r"'<\|endoftext\|>' has id 5, expected id 399"):
        SubwordTokenizer.load(saved)

    gap = {**vocab, first_merge: 1000}
    vocab_path.write_text(json.dumps(gap))
    with pytest.raises(ValueError, match=r"token ids must be 0..399, each used once"):
        SubwordTokenizer.load(saved)

    vocab_path.write_text("{not json")
    with pytest.raises(ValueError, match=r"vocab.json: invalid JSON at line 1"):
        SubwordTokenizer.load(saved)
    vocab_path.write_text('["a"]')
    with pytest.raises(ValueError, match=r"vocab.json: expected a JSON object mapping token strings to integer ids"):
        SubwordTokenizer.load(saved)


def test_missing_files(saved):
    (saved / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer file not found: .*merges.txt"):
        SubwordTokenizer.load(saved)
