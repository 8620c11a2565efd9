"""Tests for llm_lab/core/data/sources.py: every input format gives the same corpus; bad inputs are one line each."""

from __future__ import annotations

import gzip
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from llm_lab.core.data.prepare import load_prepared, prepare_corpus
from llm_lab.core.data.sources import SOURCES, iter_text_pieces, resolve_inputs
from llm_lab.core.tokenization import CharTokenizer, SubwordTokenizer

# Five documents, one of them empty (skipped and counted), with Unicode, CRLF and "<|endoftext|>" as plain text.
DOCUMENTS = [
    "The first story.\nIt has two lines.\n",
    "Zweite Geschichte: schön, grün.\r\nMit CRLF.\r\n",
    "",
    "third <|endoftext|> is only text here\n\n\nend",
    "日本語のテキスト and emoji 😀 at the end",
]


@pytest.fixture(scope="module")
def bpe() -> SubwordTokenizer:
    return SubwordTokenizer.train(DOCUMENTS * 3, 300)


def _write_txt(folder: Path) -> list[Path]:
    folder.mkdir()
    paths = []
    for k, doc in enumerate(DOCUMENTS):
        path = folder / f"doc{k:02d}.txt"
        path.write_bytes(doc.encode("utf-8"))
        paths.append(path)
    return paths


def _jsonl_bytes(docs: list[str], field: str = "text") -> bytes:
    return "".join(json.dumps({"id": k, field: d}, ensure_ascii=False) + "\n" for k, d in enumerate(docs)).encode()


def _write_parquet(path: Path, docs: list[str], row_group_size: int = 2) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), path, row_group_size=row_group_size)
    return path


def _formats(tmp_path: Path) -> dict[str, list[str]]:
    """The same documents in every supported layout: format name -> the --input values."""
    import datasets
    import zstandard

    txt = _write_txt(tmp_path / "txt")
    data = _jsonl_bytes(DOCUMENTS)
    (tmp_path / "c.jsonl").write_bytes(data)
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "pq").mkdir()
    _write_parquet(tmp_path / "pq" / "part-0.parquet", DOCUMENTS[:2])
    _write_parquet(tmp_path / "pq" / "part-1.parquet", DOCUMENTS[2:], row_group_size=1)
    datasets.Dataset.from_dict({"text": DOCUMENTS}).save_to_disk(str(tmp_path / "ds"))
    return {
        "txt files": [str(p) for p in txt],
        "txt folder": [str(tmp_path / "txt")],
        "jsonl": [str(tmp_path / "c.jsonl")],
        "jsonl.zst": [str(tmp_path / "c.jsonl.zst")],
        "jsonl.gz": [str(tmp_path / "c.jsonl.gz")],
        "parquet glob": [str(tmp_path / "pq" / "*.parquet")],
        "datasets": [str(tmp_path / "ds")],
    }


def _prepare(tokenizer, inputs, out, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the empty .txt file's "skipped"
        return prepare_corpus(tokenizer, inputs, out, val_fraction=0.2, progress=False, **kwargs)


def test_every_format_gives_byte_identical_splits(tmp_path, bpe):
    """Each layout of the same documents yields the same train.bin and val.bin, and the reference stream is
    encode(doc) for each non-empty document joined by <|endoftext|>."""
    formats = _formats(tmp_path)
    eot = bpe.eot_token_id
    reference: list[int] = []
    for doc in (d for d in DOCUMENTS if d):
        reference += ([eot] if reference else []) + bpe.encode(doc)
    n_val = int(len(reference) * 0.2)
    outputs = {}
    for name, inputs in formats.items():
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        meta = _prepare(bpe, inputs, out)
        train, val, _ = load_prepared(out)
        assert train.tolist() + val.tolist() == reference, name
        assert val.size == n_val
        assert meta["documents"] == 4 and meta["empty_documents"] == 1 and meta["eot_tokens"] == 3, name
        assert sum(s["tokens"] for s in meta["sources"]) == len(reference) - 3
        outputs[name] = ((out / "train.bin").read_bytes(), (out / "val.bin").read_bytes())
    assert len(set(outputs.values())) == 1


def test_meta_records_every_source(tmp_path, bpe):
    import hashlib

    formats = _formats(tmp_path)
    meta = _prepare(bpe, formats["parquet glob"] + formats["jsonl.zst"], tmp_path / "out")
    sources = meta["sources"]
    assert [Path(s["path"]).name for s in sources] == ["part-0.parquet", "part-1.parquet", "c.jsonl.zst"]
    assert [s["format"] for s in sources] == ["parquet", "parquet", "jsonl"]
    assert [(s["documents"], s["empty_documents"]) for s in sources] == [(2, 0), (2, 1), (4, 1)]
    for s in sources:
        on_disk = Path(s["path"]).read_bytes()
        assert s["bytes"] == len(on_disk) and s["sha256"] == hashlib.sha256(on_disk).hexdigest()
    assert sources[0]["tokens"] == len(bpe.encode(DOCUMENTS[0])) + len(bpe.encode(DOCUMENTS[1]))
    assert sources[2]["tokens"] == sources[0]["tokens"] + sources[1]["tokens"]
    assert meta["text_field"] == "text"


def test_registry_lists_the_formats():
    assert sorted(SOURCES) == ["datasets", "jsonl", "parquet", "text"]


def test_folders_and_globs_expand_in_sorted_order(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("b.txt", "a.txt", "sub/c.txt", ".hidden.txt"):
        (tmp_path / "d" / name).write_text(name)
    names = [s.path.relative_to(tmp_path / "d").as_posix() for s in resolve_inputs([tmp_path / "d"])]
    assert names == ["a.txt", "b.txt", "sub/c.txt"]
    globbed = resolve_inputs([str(tmp_path / "d" / "**" / "*.txt")])
    assert [s.path.name for s in globbed] == ["a.txt", "b.txt", "c.txt"]


def test_text_field_picks_the_field(tmp_path, bpe):
    (tmp_path / "a.jsonl").write_bytes(_jsonl_bytes(DOCUMENTS))
    (tmp_path / "b.jsonl").write_bytes(_jsonl_bytes(DOCUMENTS, field="body"))
    _prepare(bpe, [tmp_path / "a.jsonl"], tmp_path / "a")
    meta = _prepare(bpe, [tmp_path / "b.jsonl"], tmp_path / "b", text_field="body")
    assert meta["text_field"] == "body"
    assert (tmp_path / "a" / "train.bin").read_bytes() == (tmp_path / "b" / "train.bin").read_bytes()


@pytest.fixture
def old_corpus(tmp_path, bpe):
    good = tmp_path / "good.jsonl"
    good.write_bytes(_jsonl_bytes(DOCUMENTS))
    out = tmp_path / "corpus"
    _prepare(bpe, [good], out)
    return out


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (input, the error it must raise)."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "missing.jsonl").write_text('{"text": "ok"}\n\n{"body": "x", "id": 3}\n')
    (bad / "number.jsonl").write_text('{"text": "ok"}\n{"text": 42}\n')
    (bad / "null.jsonl").write_text('{"text": null}\n')
    (bad / "broken.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    (bad / "array.json").write_text('[{"text": "a"}, {"text": "b"}]\n')
    (bad / "corrupt.parquet").write_bytes(b"PAR1" + os.urandom(200) + b"PAR1")
    _write_parquet(bad / "nofield.parquet", ["a"])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [1, 2]}), bad / "ints.parquet")
    (bad / "corrupt.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(100))
    (bad / "corrupt.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(100))
    (bad / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (bad / "zeros.bin").write_bytes(b"\0" * 4096)
    return {
        "missing field": (
            str(bad / "missing.jsonl"),
            r"missing.jsonl: record 2 has no field 'text' \(its fields: body, id\)",
        ),
        "non-string": (str(bad / "number.jsonl"), r"number.jsonl: record 2: field 'text' is int, not a string"),
        "null": (str(bad / "null.jsonl"), r"null.jsonl: record 1: field 'text' is null, not a string"),
        "broken json": (str(bad / "broken.jsonl"), r"broken.jsonl: record 2 is not valid JSON"),
        "json array": (str(bad / "array.json"), r"record 1 is a JSON list, not an object; the file is one JSON array"),
        "corrupt parquet": (str(bad / "corrupt.parquet"), r"corrupt.parquet is not a readable Parquet file"),
        "parquet column": (str(bad / "nofield.parquet"), r"has no column 'tekst' \(its columns: id, text\)"),
        "parquet ints": (str(bad / "ints.parquet"), r"ints.parquet: column 'text' holds int64, not strings"),
        "corrupt zstd": (str(bad / "corrupt.jsonl.zst"), r"corrupt.jsonl.zst is not a valid zstd file"),
        "corrupt gzip": (str(bad / "corrupt.jsonl.gz"), r"corrupt.jsonl.gz is not a valid gzip file"),
        "glob": (str(bad / "*.nothing"), r"--input '.*\*.nothing' matches no file"),
        "binary": (str(bad / "binary.txt"), r"binary.txt is not UTF-8 text|binary.txt looks binary"),
        "zeros": (str(bad / "zeros.bin"), r"zeros.bin looks binary \(a NUL byte near offset 0\)"),
    }


BAD_CASES = [
    "missing field", "non-string", "null", "broken json", "json array", "corrupt parquet", "parquet column",
    "parquet ints", "corrupt zstd", "corrupt gzip", "glob", "binary", "zeros",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_clear_error_and_the_old_corpus_stays(tmp_path, bpe, old_corpus, case):
    before = {p.name: p.read_bytes() for p in old_corpus.iterdir() if p.is_file()}
    path, message = _bad_inputs(tmp_path)[case]
    field = "tekst" if case == "parquet column" else "text"
    with pytest.raises(ValueError, match=message) as info:
        _prepare(bpe, [path], old_corpus, overwrite=True, text_field=field)
    assert "\n" not in str(info.value)
    assert {p.name: p.read_bytes() for p in old_corpus.iterdir() if p.is_file()} == before
    assert not [p for p in old_corpus.parent.iterdir() if p.name.startswith(".corpus")]


def test_special_files_say_what_they_are(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"fifo is a FIFO \(named pipe\), not a regular file"):
        resolve_inputs([fifo])
    with pytest.raises(ValueError, match=r"/dev/zero is a character device, not a regular file"):
        resolve_inputs(["/dev/zero"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty is a folder with no files in it"):
        resolve_inputs([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="input file not found"):
        resolve_inputs([tmp_path / "nope.jsonl"])


def test_a_datasetdict_folder_asks_for_one_split(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]})}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=r"dd is a DatasetDict folder \(several splits\); give one split's folder"):
        resolve_inputs([tmp_path / "dd"])
    assert [s.name for s in resolve_inputs([tmp_path / "dd" / "train"])] == ["datasets"]


def test_a_long_line_streams_for_a_char_tokenizer_and_is_refused_for_bpe(tmp_path, monkeypatch):
    """A text with no line break streams in pieces for a char vocabulary (any cut is safe), equal to encoding it
    whole; for BPE, words are cut at spaces, and a text with no space either is refused beyond the limit."""
    from llm_lab.core.data import sources

    monkeypatch.setattr(sources, "READ_BYTES", 64)
    monkeypatch.setattr(sources, "MAX_UNCUT_CHARS", 1000)
    text = "abcdefgh" * 400  # 3,200 characters, no newline, no space
    path = tmp_path / "long.txt"
    path.write_text(text)
    with open(path, "rb") as f:
        pieces = list(iter_text_pieces(f, "long.txt", read_bytes=64, cut_anywhere=True))
    assert "".join(pieces) == text and max(map(len, pieces)) <= 128
    with open(path, "rb") as f, pytest.raises(ValueError, match=r"long.txt has 1,0\d\d characters with no line"):
        list(iter_text_pieces(f, "long.txt", read_bytes=64))
    words = " ".join(["word"] * 800)
    with open(path, "w") as f:
        f.write(words)
    with open(path, "rb") as f:
        pieces = list(iter_text_pieces(f, "long.txt", read_bytes=64))
    assert "".join(pieces) == words and len(pieces) > 5 and all(p.startswith((" ", "w")) for p in pieces)
    char = CharTokenizer.from_text("abcdefgh")
    (tmp_path / "long.txt").write_text(text)
    prepare_corpus(char, [path], tmp_path / "o", val_fraction=0.0, progress=False, read_bytes=64)
    train, _, _ = load_prepared(tmp_path / "o")
    assert np.array_equal(np.asarray(train), char.encode(text))


def test_a_separator_splits_a_text_file_into_documents(tmp_path, bpe, monkeypatch):
    """TinyStories' layout (stories between "<|endoftext|>" lines) gives the same corpus as one record per story,
    however the file is cut into pieces."""
    from llm_lab.core.data import sources

    monkeypatch.setattr(sources, "READ_BYTES", 16)
    stories = [d for d in DOCUMENTS if d and "<|endoftext|>" not in d] + ["Last story.\n"]
    text = "".join(story + ("" if story.endswith("\n") else "\n") + "<|endoftext|>\n" for story in stories[:-1])
    (tmp_path / "stories.txt").write_text(text + stories[-1] + "<|endoftext|>\n", newline="")
    records = [s if s.endswith("\n") else s + "\n" for s in stories]
    (tmp_path / "stories.jsonl").write_bytes(_jsonl_bytes(records))
    meta = _prepare(bpe, [tmp_path / "stories.txt"], tmp_path / "a", separator="<|endoftext|>", read_bytes=16)
    _prepare(bpe, [tmp_path / "stories.jsonl"], tmp_path / "b")
    assert meta["documents"] == 4 and meta["empty_documents"] == 1  # the empty one after the last separator
    assert (tmp_path / "a" / "train.bin").read_bytes() == (tmp_path / "b" / "train.bin").read_bytes()
    with pytest.raises(ValueError, match="separator must be text on one line"):
        resolve_inputs([tmp_path / "stories.txt"], separator="a\nb")


def test_the_cli_names_odd_inputs_in_one_line(tmp_path, capsys):
    from llm_lab.cli import main

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "folder").mkdir()
    cases = {str(fifo): "is a FIFO (named pipe), not a regular file", "/dev/zero": "is a character device",
             str(tmp_path / "folder"): "is a folder with no files in it",
             str(tmp_path / "*.parquet"): "matches no file"}
    for value, message in cases.items():
        code = main(["data", "prepare", "--tokenizer", "char", "--input", value, "--out", str(tmp_path / "o"),
                     "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1 and "not found" not in err, err
    assert not (tmp_path / "o").exists()
