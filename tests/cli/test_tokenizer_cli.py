"""`llm-lab tokenizer train` (llm_lab/cli/tokenizer.py over llm_lab/core/data/tokenizer_training.py): the folder it
writes equals SubwordTokenizer.train on the same documents, and data prepare reads it."""

from __future__ import annotations

import json

import pytest
import zstandard

from llm_lab.cli import main
from llm_lab.core.data.prepare import load_prepared
from llm_lab.core.tokenization import SubwordTokenizer, load_tokenizer


@pytest.fixture
def documents(small_text) -> list[str]:
    return [small_text[i : i + 500] for i in range(0, len(small_text), 500)] + ["", "Grüße 😀 <|endoftext|> x"]


def _files(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir()}


@pytest.mark.parametrize(("pattern", "workers"), [("gpt2", "1"), ("gpt2", "2"), ("gpt4", "2")])
def test_train_from_jsonl_equals_the_reference_trainer(tmp_path, documents, pattern, workers, capsys):
    """In one process or with words counted in two, the files equal the reference trainer's."""
    data = "".join(json.dumps({"body": d, "n": k}) + "\n" for k, d in enumerate(documents)).encode()
    (tmp_path / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", str(tmp_path / "docs.jsonl.zst"), "--text-field", "body",
                 "--vocab-size", "400", "--out", str(out), "--pattern", pattern, "--quiet", "--workers", workers]) == 0
    reference = SubwordTokenizer.train(documents, 400, pattern=pattern)
    n = reference.vocab_size  # below 400: the small corpus runs out of pairs seen twice
    assert n < 400
    assert (f"wrote {out}: vocab {n} ({len(reference.merges)} merges, pattern {pattern}; stopped below 400: no pair "
            f"left that occurs twice) from {len(documents) - 1} documents") in capsys.readouterr().out
    reference.save(tmp_path / "ref")
    assert _files(out) == _files(tmp_path / "ref")
    assert load_tokenizer(out).encode(documents[0]) == reference.encode(documents[0])


def test_text_files_stream_in_pieces_and_feed_data_prepare(tmp_path, small_text, monkeypatch):
    from llm_lab.core.data import sources

    monkeypatch.setattr(sources, "READ_BYTES", 256)  # many pieces per file
    (tmp_path / "docs").mkdir()
    parts = [small_text[: len(small_text) // 2], small_text[len(small_text) // 2 :]]
    for k, part in enumerate(parts):
        (tmp_path / "docs" / f"{k}.txt").write_text(part)
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", str(tmp_path / "docs"), "--vocab-size", "350", "--out", str(out),
                 "--special", "--quiet"]) == 0
    reference = SubwordTokenizer.train(parts, 350, special_tokens=())
    assert load_tokenizer(out).merges == reference.merges
    assert main(["data", "prepare", "--tokenizer", str(out), "--input", str(tmp_path / "docs"), "--out",
                 str(tmp_path / "corpus"), "--quiet", "--workers", "1"]) == 0
    train, val, meta = load_prepared(tmp_path / "corpus")
    assert train.size + val.size == sum(len(reference.encode(p)) for p in parts)  # no eot: no special token


def test_out_is_replaced_only_when_it_holds_a_tokenizer(tmp_path, documents, capsys):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    out = tmp_path / "tok"
    args = ["tokenizer", "train", "--input", str(tmp_path / "a.jsonl"), "--vocab-size", "300", "--out", str(out),
            "--quiet"]
    assert main(args) == 0
    before = _files(out)
    assert main(args) == 2
    assert "already holds a tokenizer; pass --overwrite" in capsys.readouterr().err
    assert main([*args[:-1], "--vocab-size", "320", "--overwrite", "--quiet"]) == 0
    assert load_tokenizer(out).vocab_size == 320
    (out / "notes.txt").write_text("mine")
    assert main([*args, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "holds notes.txt, which is not a tokenizer file" in err and len(err.strip().splitlines()) == 1
    assert (out / "notes.txt").read_text() == "mine" and before.keys() <= _files(out).keys()
    assert main(["tokenizer", "train", "--input", str(tmp_path / "none*.jsonl"), "--vocab-size", "300", "--out",
                 str(tmp_path / "t2"), "--quiet"]) == 2
    assert "matches no file" in capsys.readouterr().err
