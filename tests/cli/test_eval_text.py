"""`llm-lab eval` reads its text file exactly as `llm-lab data prepare` (and so `train`) do: a CRLF file is scored
on the same token ids, not on a copy with the carriage returns dropped."""

from __future__ import annotations

import json

import numpy as np
import pytest
from package_helpers import TEXT, make_package

from llm_lab.cli import main
from llm_lab.core.data.prepare import load_prepared, prepare_corpus, read_text_file
from llm_lab.core.tokenization import CharTokenizer, SubwordTokenizer

CRLF_TEXT = TEXT.replace("\n", "\r\n") + "no newline at the end"


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_eval_scores_the_ids_data_prepare_makes_of_a_crlf_file(tmp_path, capsys, kind):
    """Before: eval read the file in text mode, turned CRLF into LF and scored fewer, other tokens (199,999
    tokens of a 207,553-byte file) than `data prepare` and `train` see."""
    path = tmp_path / "crlf.txt"
    path.write_bytes(CRLF_TEXT.encode("utf-8"))
    if kind == "char":
        tokenizer = CharTokenizer.from_text(CRLF_TEXT)
    else:
        tokenizer = SubwordTokenizer.train(CRLF_TEXT, 300, show_progress=False)
    prepare_corpus(tokenizer, [path], tmp_path / "prepared", val_fraction=0.0, progress=False)
    train_ids, val_ids, _ = load_prepared(tmp_path / "prepared")
    prepared = np.concatenate([train_ids, val_ids]).tolist()

    text = read_text_file(path)
    assert text == CRLF_TEXT and text.count("\r\n") == TEXT.count("\n")
    assert tokenizer.encode(text) == prepared  # one reader: the same ids as the prepared corpus

    package, _ = make_package(tmp_path / "pkg", tokenizer)
    assert main(["eval", str(package), "--data", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # A tokenizer with an end-of-text token predicts every token of the text; without one, all but the first.
    first = 0 if tokenizer.eot_token_id is not None else 1
    assert result["tokens"] == len(prepared) - first
    assert result["bytes"] == path.stat().st_size - len(tokenizer.decode(prepared[:first]).encode("utf-8"))
