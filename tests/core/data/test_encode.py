"""Tests for llm_lab/core/data/encode.py: tiktoken's ids equal ours; parallel encoders (threads or processes)
change nothing."""

from __future__ import annotations

import json
import os
import string
import textwrap
from pathlib import Path

import numpy as np
import pytest

from llm_lab.core.data.encode import ENCODERS, LlmLabEncoder, TiktokenEncoder, choose_encoder, encode_batches
from llm_lab.core.data.prepare import load_prepared, prepare_corpus
from llm_lab.core.tokenization import CharTokenizer, SubwordTokenizer


def _stdlib_texts() -> list[str]:
    files = [Path(os.__file__), Path(string.__file__), Path(textwrap.__file__)]
    files += sorted(Path(json.__file__).parent.glob("*.py"))
    return [p.read_text(encoding="utf-8") for p in files]


MIXED = "Grüße, 世界! 😀 <|endoftext|> tabs\t\tand  spaces\r\nCRLF\n\n  x = f(1, 2)  # 3.14\n"


@pytest.fixture(scope="module", params=["gpt2", "gpt4"])
def bpe(request) -> SubwordTokenizer:
    return SubwordTokenizer.train(_stdlib_texts(), 700, pattern=request.param)


def test_tiktoken_ids_equal_ours(bpe):
    """On real source code and a Unicode mix, tiktoken over our ranks gives exactly our ids."""
    ours = LlmLabEncoder(bpe, np.dtype(np.uint16))
    fast = choose_encoder(bpe, np.dtype(np.uint16), "auto", sample=MIXED)
    assert isinstance(fast, TiktokenEncoder)
    for text in [*_stdlib_texts(), MIXED, "lone \ud800 surrogate"]:
        assert fast.encode_text(text) == ours.encode_text(text)
        assert fast.encode_array(text).tolist() == ours.encode_text(text)  # the buffer route too
    assert fast.encode_array("<|endoftext|>").tolist() == bpe.encode("<|endoftext|>")  # special text is ordinary


def test_tiktoken_without_its_numpy_route_gives_the_same_batch(bpe):
    """tiktoken before 0.8 has no ``encode_to_numpy``: the list route gives the same ids."""
    fast = choose_encoder(bpe, np.dtype(np.uint16), "tiktoken")
    batch = [(MIXED, False), ("second doc", True), ("", False)]
    with_buffer = fast(batch)
    fast._to_numpy = None
    without = fast(batch)
    assert with_buffer[0].tolist() == without[0].tolist() and with_buffer[1] == without[1]
    assert with_buffer[0].dtype == np.uint16


def test_a_tiktoken_whose_numpy_route_encodes_special_text_as_special_is_not_used(bpe, monkeypatch):
    """tiktoken 0.9's encode_to_numpy ignores allowed_special and gives the special id for "<|endoftext|>" text;
    the buffer route is probed once and left out where it differs from encode_ordinary."""
    import tiktoken

    def special_aware(self, text, *, allowed_special=(), disallowed_special=()):
        return np.asarray(self.encode(text, allowed_special="all"), dtype=np.uint32)

    monkeypatch.setattr(tiktoken.Encoding, "encode_to_numpy", special_aware)
    fast = choose_encoder(bpe, np.dtype(np.uint16), "tiktoken")
    assert fast._to_numpy is None
    assert fast.encode_array("a <|endoftext|> b").tolist() == bpe.encode("a <|endoftext|> b")


def test_encoders_and_the_choice(bpe):
    assert sorted(ENCODERS) == ["llm-lab", "tiktoken"]
    char = CharTokenizer.from_text("abc")
    assert choose_encoder(char, np.dtype(np.uint16)).name == "llm-lab"
    with pytest.raises(ValueError, match="encoder 'tiktoken' cannot encode for this tokenizer: not a byte-level"):
        choose_encoder(char, np.dtype(np.uint16), "tiktoken")
    with pytest.raises(ValueError, match="encoder must be 'auto' or one of"):
        choose_encoder(bpe, np.dtype(np.uint16), "fast")
    assert choose_encoder(bpe, np.dtype(np.uint16), "llm-lab").name == "llm-lab"


def test_a_disagreeing_tiktoken_falls_back_with_a_warning(bpe, monkeypatch):
    monkeypatch.setattr(TiktokenEncoder, "encode_text", lambda self, text: [0])
    with pytest.warns(UserWarning, match="tiktoken's ids differ from the tokenizer's own on this corpus"):
        assert choose_encoder(bpe, np.dtype(np.uint16), "auto", sample="hello").name == "llm-lab"


def test_batches_put_an_eot_before_each_later_document(bpe):
    encoder = LlmLabEncoder(bpe, np.dtype(np.uint16))
    ids, counts = encoder([("ab", False), ("cd", False), ("ef", True)])
    expected = bpe.encode("ab") + bpe.encode("cd") + [bpe.eot_token_id] + bpe.encode("ef")
    assert ids.tolist() == expected and counts == [len(bpe.encode(t)) for t in ("ab", "cd", "ef")]


def test_workers_keep_the_input_order(bpe):
    batches = [[(f"batch {k} " * (k % 7 + 1), k > 0)] for k in range(20)]
    encoder = choose_encoder(bpe, np.dtype(np.uint16))
    serial = [ids.tolist() for ids, _ in encode_batches(batches, encoder, 1)]
    parallel = [ids.tolist() for ids, _ in encode_batches(iter(batches), encoder, 2)]
    assert parallel == serial


def test_tiktoken_encodes_in_threads_and_the_pure_python_encoder_in_processes(bpe):
    """tiktoken releases the GIL, so its parallel encoders are threads (no process started, nothing pickled)."""
    import multiprocessing

    batches = [[(f"batch {k} " * 50, False)] for k in range(8)]
    fast = choose_encoder(bpe, np.dtype(np.uint16), "tiktoken")
    assert fast.releases_gil and not LlmLabEncoder.releases_gil
    stream = encode_batches(batches, fast, 2)
    first = next(stream)
    assert multiprocessing.active_children() == []
    assert [first[0].tolist(), *(ids.tolist() for ids, _ in stream)] == [fast(b)[0].tolist() for b in batches]
    stream = encode_batches(batches, LlmLabEncoder(bpe, np.dtype(np.uint16)), 2)
    next(stream)
    assert len(multiprocessing.active_children()) == 2
    stream.close()
    assert multiprocessing.active_children() == []


def test_an_error_in_a_thread_reaches_the_caller(bpe):
    small = SubwordTokenizer.train("ab ab ab", 258, special_tokens=())
    fast = choose_encoder(small, np.dtype(np.uint16), "tiktoken")
    fast.vocab_size = 200  # as if the ranks held ids the corpus's dtype cannot store
    with pytest.raises(ValueError, match="the tokenizer produced id 2\\d\\d outside its vocabulary of 200"):
        list(encode_batches([[("ab", False)], [("ab", False)], [("ab", False)]], fast, 2))


def test_an_error_in_a_worker_reaches_the_caller():
    char = CharTokenizer.from_text("ab")
    with pytest.raises(ValueError, match="'z'"):
        list(encode_batches([[("ab", False)], [("abz", False)], [("b", False)]], LlmLabEncoder(char, np.uint16), 2))


def test_prepare_with_two_workers_and_tiktoken_equals_one_worker_and_ours(tmp_path, bpe):
    folder = tmp_path / "docs"
    folder.mkdir()
    for k, text in enumerate([*_stdlib_texts(), MIXED]):
        (folder / f"{k:03d}.txt").write_text(text, encoding="utf-8", newline="")
    reference = prepare_corpus(
        bpe, [folder], tmp_path / "ref", progress=False, workers=1, encoder="llm-lab", read_bytes=4096
    )
    fast = prepare_corpus(bpe, [folder], tmp_path / "fast", progress=False, workers=2, encoder="tiktoken")
    assert reference["encoder"] == "llm-lab" and fast["encoder"] == "tiktoken"
    for split in ("train.bin", "val.bin"):
        assert (tmp_path / "ref" / split).read_bytes() == (tmp_path / "fast" / split).read_bytes()
    train, val, _ = load_prepared(tmp_path / "fast")
    whole = []
    for text in [*_stdlib_texts(), MIXED]:
        whole += ([bpe.eot_token_id] if whole else []) + bpe.encode(text)
    assert train.tolist() + val.tolist() == whole
