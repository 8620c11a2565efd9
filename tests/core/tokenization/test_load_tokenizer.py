"""``load_tokenizer`` dispatches on tokenizer_config.json's "type"."""

from __future__ import annotations

import pytest

from llm_lab.core.tokenization import CharTokenizer, SubwordTokenizer, Tokenizer, load_tokenizer


def test_dispatch_on_type(tmp_path, small_text):
    char = CharTokenizer.from_text(small_text).save(tmp_path / "char")
    bpe = SubwordTokenizer.train(small_text, 300, show_progress=False).save(tmp_path / "bpe")
    assert isinstance(load_tokenizer(char), CharTokenizer)
    assert isinstance(load_tokenizer(bpe), SubwordTokenizer)
    for directory in (char, bpe):
        tok = load_tokenizer(directory)
        assert isinstance(tok, Tokenizer)
        assert tok.decode(tok.encode(small_text)) == small_text


def test_bad_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no tokenizer in .*: tokenizer_config.json is missing"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"type": "wordpiece"}')
    with pytest.raises(ValueError, match=r"tokenizer_config.json: unknown tokenizer type 'wordpiece'; expected one "
                                         r"of \['bpe', 'char'\]"):
        load_tokenizer(tmp_path)
