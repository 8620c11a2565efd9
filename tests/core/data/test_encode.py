"""Tests for llm_lab/core/data/encode.py: tiktoken's ids equal ours; worker processes change nothing."""

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
