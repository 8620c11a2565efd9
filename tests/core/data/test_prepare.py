"""Tests for llm_lab/core/data/prepare.py: .bin layout, the split, documents, chunked streaming, meta.json, errors."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from llm_lab.core.data import LanguageModelingDataset
from llm_lab.core.data.prepare import (
    build_char_tokenizer,
    corpus_fingerprint,
    dtype_for_vocab,
    iter_text_chunks,
    load_corpus_tokenizer,
    load_prepared,
    prepare_corpus,
)
from llm_lab.core.tokenization import CharTokenizer, SubwordTokenizer, load_tokenizer
from llm_lab.core.tokenization.fingerprint import tokenizer_fingerprint


class ByteTokenizer:
    """A stand-in tokenizer (ids = UTF-8 bytes + ``offset``, eot = 256 + offset) to test preparation on its own."""

    def __init__(self, offset: int = 0, eot: bool = True) -> None:
        self.offset = offset
        self.vocab_size = 257 + offset
        self.eot_token_id = 256 + offset if eot else None

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def save(self, directory) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "tokenizer_config.json").write_text(json.dumps({"type": "bytes-stub"}))


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def _leftovers(directory: Path) -> list[str]:
    """Hidden entries inside ``directory`` (if it exists) and beside it (where a new corpus is staged)."""
    places = [directory, directory.parent] if directory.is_dir() else [directory.parent]
    return sorted(p.name for place in places for p in place.iterdir() if p.name.startswith("."))


def test_two_documents_eot_between_and_last_fraction_is_val(tmp_path):
    """a.txt = "hello\\n" (6 bytes), b.txt = "world!\\n" (7): stream = 6 + [eot] + 7 = 14 tokens.
    val_fraction 0.25 -> int(14 * 0.25) = 3 val tokens: the last three, "!\\n" preceded by "d"."""
    a = _write(tmp_path / "a.txt", "hello\n")
    b = _write(tmp_path / "b.txt", "world!\n")
    out = tmp_path / "corpus"
    meta = prepare_corpus(ByteTokenizer(), [a, b], out, val_fraction=0.25, progress=False)
    stream = list(b"hello\n") + [256] + list(b"world!\n")
    train, val, loaded = load_prepared(out)
    assert isinstance(train, np.memmap) and train.dtype == np.uint16
    assert train.tolist() == stream[:11]
    assert val.tolist() == stream[11:] == list(b"d!\n")
    assert loaded == meta
    assert meta["train_tokens"] == 11 and meta["val_tokens"] == 3 and meta["total_tokens"] == 14
    assert meta["eot_tokens"] == 1 and meta["documents"] == 2
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 257
    assert meta["tokenizer"] == {
        "type": "bytes-stub", "path": "tokenizer", "vocab_size": 257, "eot_token_id": 256, "fingerprint": None
    }  # a stand-in without decode_bytes has no fingerprint
    assert [s["sha256"] for s in meta["sources"]] == [
        hashlib.sha256(b"hello\n").hexdigest(),
        hashlib.sha256(b"world!\n").hexdigest(),
    ]
    assert [(s["bytes"], s["tokens"]) for s in meta["sources"]] == [(6, 6), (7, 7)]
    assert (out / "tokenizer" / "tokenizer_config.json").is_file()
    assert json.loads((out / "meta.json").read_text()) == meta
    assert _leftovers(out) == []  # no temporary files
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "train.bin").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    assert (out / "tokenizer").stat().st_mode & 0o777 == 0o777 & ~umask
    # The .bin files feed the dataset directly.
    ds = LanguageModelingDataset.from_bin(out / "train.bin", 4, meta["dtype"])
    assert ds[0][0].tolist() == list(b"hell")


def test_no_eot_when_the_tokenizer_has_none(tmp_path):
    a = _write(tmp_path / "a.txt", "ab")
    b = _write(tmp_path / "b.txt", "cd")
    meta = prepare_corpus(ByteTokenizer(eot=False), [a, b], tmp_path / "o", val_fraction=0.0, progress=False)
    train, val, _ = load_prepared(tmp_path / "o")
    assert train.tolist() == list(b"abcd") and val.size == 0
    assert meta["eot_tokens"] == 0


def test_chunked_streaming_equals_one_piece(tmp_path):
    """Reading 5 bytes at a time splits multi-byte characters and lines; the ids must not change."""
    text = "Première ligne, déjà.\nZweite Zeile: 日本語のテキスト\n\nthird line 42\nend" * 20
    path = _write(tmp_path / "t.txt", text)
    chunks = list(iter_text_chunks(path, read_bytes=5))
    assert "".join(t for t, _ in chunks) == text
    assert b"".join(raw for _, raw in chunks) == text.encode("utf-8")
    assert sum(1 for t, _ in chunks if t) > 10  # it really streamed in pieces
    prepare_corpus(ByteTokenizer(), [path], tmp_path / "small", val_fraction=0.1, progress=False, read_bytes=5)
    prepare_corpus(ByteTokenizer(), [path], tmp_path / "big", val_fraction=0.1, progress=False)
    for split in ("train.bin", "val.bin"):
        assert (tmp_path / "small" / split).read_bytes() == (tmp_path / "big" / split).read_bytes()


def test_chunks_are_cut_only_after_a_line_and_before_a_letter(tmp_path):
    text = "one two\n\n  three\nfour.\n5 six\nseven\n" * 5
    path = _write(tmp_path / "t.txt", text)
    for chunk, _ in list(iter_text_chunks(path, read_bytes=3))[:-1]:
        if chunk:
            assert chunk.endswith("\n") and not chunk[-2].isspace()


def test_uint32_when_the_vocab_does_not_fit_uint16(tmp_path):
    assert dtype_for_vocab(65536) == np.uint16
    assert dtype_for_vocab(65537) == np.uint32
    path = _write(tmp_path / "t.txt", "abc")
    meta = prepare_corpus(ByteTokenizer(offset=70_000), [path], tmp_path / "o", val_fraction=0.0, progress=False)
    assert meta["dtype"] == "uint32"
    train, _, _ = load_prepared(tmp_path / "o")
    assert train.dtype == np.uint32 and train.tolist() == [70_097, 70_098, 70_099]
    assert (tmp_path / "o" / "train.bin").stat().st_size == 3 * 4


def test_empty_corpus_is_an_error_and_leaves_no_corpus(tmp_path):
    a = _write(tmp_path / "a.txt", "")
    out = tmp_path / "o"
    with pytest.raises(ValueError, match="corpus is empty"), pytest.warns(UserWarning, match="a.txt is empty"):
        prepare_corpus(ByteTokenizer(), [a], out, progress=False)
    assert not out.exists()  # a corpus that could not be built leaves nothing, not even its directory
    assert _leftovers(out) == []


def test_empty_file_among_others_is_skipped_with_a_warning(tmp_path):
    a = _write(tmp_path / "a.txt", "xy")
    e = _write(tmp_path / "e.txt", "")
    b = _write(tmp_path / "b.txt", "z")
    with pytest.warns(UserWarning, match="e.txt is empty"):
        meta = prepare_corpus(ByteTokenizer(), [a, e, b], tmp_path / "o", val_fraction=0.0, progress=False)
    train, _, _ = load_prepared(tmp_path / "o")
    assert train.tolist() == [ord("x"), ord("y"), 256, ord("z")]  # one eot: the empty file is no document
    assert meta["documents"] == 2


def test_warnings_for_a_validation_split_without_a_window(tmp_path):
    path = _write(tmp_path / "t.txt", "x" * 100)
    with pytest.warns(UserWarning, match=r"validation split has 10 tokens, fewer than context_length \+ 1 = 17"):
        prepare_corpus(ByteTokenizer(), [path], tmp_path / "a", val_fraction=0.1, context_length=16, progress=False)
    with pytest.warns(UserWarning, match=r"validation split is empty \(100 tokens x val_fraction 0.005 rounds down"):
        prepare_corpus(ByteTokenizer(), [path], tmp_path / "b", val_fraction=0.005, progress=False)


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5, "0.1", True])
def test_bad_val_fraction(tmp_path, fraction):
    path = _write(tmp_path / "t.txt", "abc")
    with pytest.raises(ValueError, match=r"val_fraction must be a number in \[0, 1\)"):
        prepare_corpus(ByteTokenizer(), [path], tmp_path / "o", val_fraction=fraction, progress=False)


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="input file not found"):
        prepare_corpus(ByteTokenizer(), [tmp_path / "missing.txt"], tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="no input files"):
        prepare_corpus(ByteTokenizer(), [], tmp_path / "o", progress=False)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt is not UTF-8 text \(bad byte near offset 3\)"):
        prepare_corpus(ByteTokenizer(), [bad], tmp_path / "o", progress=False)

    class Overflowing(ByteTokenizer):
        def encode(self, text):
            return [300]

    ok = _write(tmp_path / "ok.txt", "a")
    with pytest.raises(ValueError, match="id 300 outside its vocabulary of 257"):
        prepare_corpus(Overflowing(), [ok], tmp_path / "o2", progress=False)
    assert _leftovers(tmp_path / "o2") == []


def test_refuses_to_replace_a_corpus_unless_overwrite(tmp_path):
    a = _write(tmp_path / "a.txt", "first corpus")
    b = _write(tmp_path / "b.txt", "second")
    out = tmp_path / "o"
    prepare_corpus(ByteTokenizer(), [a], out, val_fraction=0.0, progress=False)
    with pytest.raises(FileExistsError, match="already holds a prepared corpus.*--overwrite"):
        prepare_corpus(ByteTokenizer(), [b], out, val_fraction=0.0, progress=False)
    assert load_prepared(out)[0].tolist() == list(b"first corpus")  # untouched
    prepare_corpus(ByteTokenizer(), [b], out, val_fraction=0.0, progress=False, overwrite=True)
    assert load_prepared(out)[0].tolist() == list(b"second")


def test_load_prepared_checks_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a prepared corpus.*llm-lab data prepare"):
        load_prepared(tmp_path)
    path = _write(tmp_path / "t.txt", "abcdefghij")
    out = tmp_path / "o"
    prepare_corpus(ByteTokenizer(), [path], out, val_fraction=0.2, progress=False)
    with open(out / "train.bin", "r+b") as f:
        f.truncate(6)  # 3 of 8 tokens: a damaged file
    with pytest.raises(ValueError, match=r"train.bin holds 6 bytes but meta.json promises 8 uint16 tokens"):
        load_prepared(out)
    meta = json.loads((out / "meta.json").read_text())
    meta["format_version"] = 99
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format_version 99"):
        load_prepared(out)


def test_progress_bar_counts_the_bytes_read(tmp_path, capsys):
    path = _write(tmp_path / "t.txt", "abcdefghij" * 30)
    prepare_corpus(ByteTokenizer(), [path], tmp_path / "a", progress=True)
    err = capsys.readouterr().err
    assert "tokenising" in err and "300/300" in err
    prepare_corpus(ByteTokenizer(), [path], tmp_path / "b", progress=False)
    assert "tokenising" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda meta: meta.pop("dtype"), r"meta.json lacks dtype; prepare the corpus again"),
        (lambda meta: meta.pop("val_tokens"), r"meta.json lacks val_tokens"),
        (lambda meta: meta.update(dtype="float32"), r"meta.json: dtype must be 'uint16' or 'uint32', got 'float32'"),
        (lambda meta: meta.update(dtype="int9"), r"dtype must be 'uint16' or 'uint32', got 'int9'"),
        (lambda meta: meta.update(train_tokens="8"), r"train_tokens must be a non-negative integer, got '8'"),
    ],
)
def test_load_prepared_names_a_damaged_meta_json(tmp_path, change, message):
    out = tmp_path / "o"
    prepare_corpus(ByteTokenizer(), [_write(tmp_path / "t.txt", "abcdefghij")], out, val_fraction=0.2, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    change(meta)
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message):
        load_prepared(out)
    (out / "meta.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"meta.json must hold a JSON object, not list"):
        load_prepared(out)


# --- with the project's tokenizers -------------------------------------------------------------------------------

TRICKY = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n\nAll:\n   Speak, speak.\n"
    "Numbers 12345 and 6789!\nÉtienne said: «déjà vu» — 日本語.\n\t\ttabs\n  spaces before\nend.\n"
)


def test_char_corpus_round_trips(tmp_path, small_text):
    a = _write(tmp_path / "a.txt", small_text)
    b = _write(tmp_path / "b.txt", TRICKY)
    tok = build_char_tokenizer([a, b])
    assert tok.vocab == CharTokenizer.from_text(small_text + TRICKY).vocab
    meta = prepare_corpus(tok, [a, b], tmp_path / "o", val_fraction=0.1, progress=False, read_bytes=64)
    train, val, _ = load_prepared(tmp_path / "o")
    assert tok.eot_token_id is None and meta["eot_tokens"] == 0
    assert tok.decode(np.concatenate([train, val]).tolist()) == small_text + TRICKY
    assert meta["tokenizer"]["type"] == "char"
    assert load_tokenizer(tmp_path / "o" / "tokenizer").vocab == tok.vocab


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_bpe_corpus_equals_whole_text_encoding(tmp_path, small_text, pattern):
    """Streaming in 7-byte reads must give exactly encode(document) for each document, joined by <|endoftext|>."""
    doc_a = small_text[:2000] + TRICKY
    doc_b = TRICKY * 3
    tok = SubwordTokenizer.train(doc_a + doc_b, vocab_size=300, pattern=pattern, show_progress=False)
    a = _write(tmp_path / "a.txt", doc_a)
    b = _write(tmp_path / "b.txt", doc_b)
    meta = prepare_corpus(tok, [a, b], tmp_path / "o", val_fraction=0.1, progress=False, read_bytes=7)
    train, val, _ = load_prepared(tmp_path / "o")
    expected = tok.encode(doc_a) + [tok.eot_token_id] + tok.encode(doc_b)
    assert np.concatenate([train, val]).tolist() == expected
    assert meta["tokenizer"]["type"] == "bpe" and meta["eot_tokens"] == 1
    assert meta["tokenizer"]["eot_token_id"] == tok.eot_token_id
    reloaded = load_tokenizer(tmp_path / "o" / "tokenizer")
    assert reloaded.encode(doc_b) == tok.encode(doc_b)


def test_tiny_shakespeare_char_corpus(tmp_path, shakespeare_path):
    if shakespeare_path is None:
        pytest.skip("tiny Shakespeare is not beside the repository (../shared/data)")
    tok = build_char_tokenizer([shakespeare_path])
    meta = prepare_corpus(tok, [shakespeare_path], tmp_path / "o", progress=False)
    assert meta["vocab_size"] == 65
    assert meta["total_tokens"] == 1_115_394  # ASCII: one token per byte
    assert meta["val_tokens"] == 111_539  # int(1_115_394 * 0.1)
    assert meta["sources"][0]["sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    train, val, _ = load_prepared(tmp_path / "o")
    text = shakespeare_path.read_text(encoding="utf-8")
    assert tok.decode(val.tolist()) == text[-111_539:]
    assert tok.decode(train[:100].tolist()) == text[:100]


# --- replacing a corpus: only ours, only when the new one is complete ----------------------------------------------

DEAD_PID = 99_999_999  # above Linux's largest pid: no process has it, so its leftovers are stale


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def old_corpus(tmp_path) -> Path:
    out = tmp_path / "o"
    prepare_corpus(CharTokenizer.from_text("abc\n"), [_write(tmp_path / "old.txt", "abcabc\n" * 20)], out,
                   progress=False)
    return out


def _fail_to_save(self, directory):
    Path(directory).mkdir(parents=True)
    (Path(directory) / "vocab.json").write_text("{")  # half written
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize(
    ("content", "tokenizer", "error", "message"),
    [
        (b"", "same", ValueError, "corpus is empty"),
        ("caf\xe9".encode("latin-1"), "same", ValueError, r"new.txt is not UTF-8 text"),
        (b"abcz", "same", ValueError, r"'z'"),  # a character the saved char tokenizer does not know
        (b"abc", "failing", OSError, "no space left on device writing"),  # an exception mid-way, after tokenising
    ],
)
def test_a_failing_overwrite_leaves_the_old_corpus(old_corpus, tmp_path, content, tokenizer, error, message):
    before = _snapshot(old_corpus)
    new = tmp_path / "new.txt"
    new.write_bytes(content)
    tok = load_tokenizer(old_corpus / "tokenizer")
    if tokenizer == "failing":
        tok.save = _fail_to_save.__get__(tok)
    with pytest.raises(error, match=message), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the empty file's "skipped" warning
        prepare_corpus(tok, [new], old_corpus, overwrite=True, progress=False)
    assert _snapshot(old_corpus) == before
    assert load_prepared(old_corpus)[0].size > 0
    assert _leftovers(old_corpus) == []


def test_overwrite_replaces_only_a_corpus_it_recognises(old_corpus, tmp_path):
    new = _write(tmp_path / "new.txt", "cab\n" * 30)
    (old_corpus / "notes.md").write_text("mine")
    before = _snapshot(old_corpus)
    tok = load_tokenizer(old_corpus / "tokenizer")
    with pytest.raises(ValueError, match=r"o holds notes.md, which llm-lab did not write; move it out"):
        prepare_corpus(tok, [new], old_corpus, overwrite=True, progress=False)
    assert _snapshot(old_corpus) == before
    (old_corpus / "notes.md").unlink()
    meta = json.loads((old_corpus / "meta.json").read_text())
    (old_corpus / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "kind"}))
    with pytest.raises(ValueError, match=r"meta.json is not the manifest of a corpus this version of llm-lab "
                       r"prepared \(no \"kind\": \"llm-lab prepared corpus\", format_version 1\); nothing replaced"):
        prepare_corpus(tok, [new], old_corpus, overwrite=True, progress=False)
    (old_corpus / "meta.json").write_text(json.dumps(meta | {"files": ["train.bin", "../../etc/passwd"]}))
    with pytest.raises(ValueError, match=r"lists '../../etc/passwd', a path outside the corpus; nothing replaced"):
        prepare_corpus(tok, [new], old_corpus, overwrite=True, progress=False)
    (old_corpus / "meta.json").write_text(json.dumps(meta))
    (old_corpus / f".meta.json.{DEAD_PID}.a1b2c3d4.tmp").write_text("{")  # a killed write's leftover: removed
    prepare_corpus(tok, [new], old_corpus, overwrite=True, progress=False)
    assert tok.decode(load_prepared(old_corpus)[0][:4].tolist()) == "cab\n"
    assert _leftovers(old_corpus) == []


def test_a_folder_that_is_no_corpus_is_never_filled(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "meta.json").write_text('{"name": "my thesis"}')
    (project / "chapter1.tex").write_text("...")
    text = _write(tmp_path / "t.txt", "abc")
    with pytest.raises(FileExistsError, match="already holds a prepared corpus"):
        prepare_corpus(ByteTokenizer(), [text], project, progress=False)
    with pytest.raises(ValueError, match=r"meta.json is not the manifest of a corpus"):
        prepare_corpus(ByteTokenizer(), [text], project, overwrite=True, progress=False)
    (project / "meta.json").unlink()
    with pytest.raises(ValueError, match=r"project is not empty and holds no prepared corpus \(found chapter1.tex\)"):
        prepare_corpus(ByteTokenizer(), [text], project, overwrite=True, progress=False)
    assert sorted(os.listdir(project)) == ["chapter1.tex"]
    (tmp_path / "empty").mkdir()
    prepare_corpus(ByteTokenizer(), [text], tmp_path / "empty", val_fraction=0.0, progress=False)
    assert load_prepared(tmp_path / "empty")[0].tolist() == list(b"abc")


def test_meta_json_lists_the_files_and_fingerprints_the_tokenizer(old_corpus):
    meta = json.loads((old_corpus / "meta.json").read_text())
    assert meta["kind"] == "llm-lab prepared corpus"
    assert meta["files"] == ["tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "train.bin", "val.bin"]
    assert meta["tokenizer"]["fingerprint"] == tokenizer_fingerprint(CharTokenizer.from_text("abc\n"))


def test_a_tokenizer_replaced_after_preparation_is_detected(old_corpus):
    _, _, meta = load_prepared(old_corpus)
    assert load_corpus_tokenizer(old_corpus, meta).encode("cab") == [3, 1, 2]
    CharTokenizer({"\n": 3, "c": 0, "b": 1, "a": 2}).save(old_corpus / "tokenizer")  # the same characters, permuted
    with pytest.raises(ValueError, match=r"o/tokenizer is not the tokenizer that prepared .*o \(its ids map to other "
                       r"text than meta.json records\); prepare the corpus again"):
        load_corpus_tokenizer(old_corpus, meta)


def test_load_prepared_finishes_a_replacement_a_kill_interrupted(old_corpus, tmp_path):
    """A kill after ``o -> .o.old-*`` and before ``.o.new-* -> o``: the next reader puts the new corpus in place."""
    new = tmp_path / "elsewhere"
    prepare_corpus(ByteTokenizer(), [_write(tmp_path / "n.txt", "new text")], new, val_fraction=0.0, progress=False)
    os.replace(old_corpus, tmp_path / f".o.old-{DEAD_PID}-0123abcd")
    os.replace(new, tmp_path / f".o.new-{DEAD_PID}-0123abcd")
    assert load_prepared(old_corpus)[0].tolist() == list(b"new text")
    assert _leftovers(old_corpus) == []


def test_corpus_fingerprint_names_the_content_not_the_paths(tmp_path):
    a = _write(tmp_path / "a.txt", "same text")
    b = _write(tmp_path / "b.txt", "same text")
    c = _write(tmp_path / "c.txt", "same texT")
    tokenizer = CharTokenizer.from_text("same txT")
    metas = [prepare_corpus(tokenizer, [p], tmp_path / p.stem, 0.0, progress=False) for p in (a, b, c)]
    fingerprints = [corpus_fingerprint(meta) for meta in metas]
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]


@pytest.mark.slow
def test_a_killed_overwrite_leaves_a_loadable_corpus(tmp_path):
    """SIGKILL ``llm-lab data prepare --overwrite`` at different moments: the corpus at the path always loads, and
    holds the old ids or the new ones, never a mixture or nothing."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "corpus"
    old = _write(tmp_path / "old.txt", "abc\n" * 50_000)
    new = _write(tmp_path / "new.txt", "cba\n" * 3_000_000)  # 12 MB: about two seconds of tokenising
    prepare_corpus(CharTokenizer.from_text("abc\n"), [old], out, progress=False)
    old_ids = load_prepared(out)[0][:8].tolist()
    command = [sys.executable, "-m", "llm_lab", "data", "prepare", "--tokenizer", str(out / "tokenizer"),
               "--input", str(new), "--out", str(out), "--overwrite", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    outcomes = set()
    for delay in (0.3, 0.8, 1.3, 1.8, 2.3, 2.8, 3.5):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        train, _, _ = load_prepared(out)  # finishes or rolls back a swap the kill interrupted
        first = train[:8].tolist()
        assert first in (old_ids, [3, 2, 1, 0] * 2), first  # "\n" a b c are ids 0 1 2 3
        outcomes.add("new" if first != old_ids else "old")
        assert train.size == (180_000 if first == old_ids else 10_800_000)
        # a killed writer leaves its staging folder and its lock file (stale: the next writer takes it over)
        assert all(".tmp-" in name or name == f".{out.name}.lock" for name in _leftovers(out))
    assert "old" in outcomes  # (how many kills land after the swap depends on the machine's speed)
    subprocess.run(command, env=env, check=True)  # uninterrupted, it replaces the corpus and clears the leftovers
    assert load_prepared(out)[0][:4].tolist() == [3, 2, 1, 0] and _leftovers(out) == []


def test_the_current_directory_is_never_swapped_out(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with pytest.raises(ValueError, match=r"--out \.\. is the current directory \(or holds it\); a corpus is built"):
        prepare_corpus(ByteTokenizer(), [_write(tmp_path / "t.txt", "abc")], "..", progress=False)
