"""Tests for `llm-lab data prepare` and `llm-lab data download` (in-process through llm_lab.cli.main, plus one
real subprocess for the console entry point). No test touches the internet."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

import llm_lab.cli
from llm_lab.cli import main
from llm_lab.core.data.download import TINY_SHAKESPEARE
from llm_lab.core.data.prepare import load_prepared
from llm_lab.core.tokenization import SubwordTokenizer, load_tokenizer


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/input.txt"


@pytest.fixture(autouse=True)
def _only_this_command_group(monkeypatch):
    """Build the real `llm-lab` parser with the `data` group alone, so other groups' imports cannot interfere."""
    monkeypatch.setattr(llm_lab.cli, "_COMMAND_MODULES", ("data",))


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    return err


def test_prepare_char(tmp_path, small_text, capsys):
    src = tmp_path / "corpus.txt"
    src.write_text(small_text, encoding="utf-8")
    out = tmp_path / "prepared"
    rc = main(["data", "prepare", "--tokenizer", "char", "--input", str(src), "--out", str(out), "--quiet"])
    assert rc == 0
    train, val, meta = load_prepared(out)
    n = len(small_text)
    assert meta["total_tokens"] == n and meta["val_tokens"] == int(n * 0.1)
    tok = load_tokenizer(out / "tokenizer")
    assert tok.decode(np.concatenate([train, val]).tolist()) == small_text
    assert f"{meta['train_tokens']:,} train" in capsys.readouterr().out


def test_prepare_with_a_saved_bpe_tokenizer(tmp_path, small_text):
    tok_dir = tmp_path / "tok"
    tok = SubwordTokenizer.train(small_text, vocab_size=280, show_progress=False)
    tok.save(tok_dir)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("to be, or not to be\n", encoding="utf-8")
    b.write_text("the quick brown fox\n", encoding="utf-8")
    out = tmp_path / "prepared"
    args = ["data", "prepare", "--tokenizer", str(tok_dir), "--input", str(a), str(b), "--out", str(out)]
    assert main([*args, "--val-fraction", "0.2", "--quiet"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"]["type"] == "bpe" and meta["val_fraction"] == 0.2
    train, val, _ = load_prepared(out)
    expected = tok.encode("to be, or not to be\n") + [tok.eot_token_id] + tok.encode("the quick brown fox\n")
    assert np.concatenate([train, val]).tolist() == expected


def test_prepare_errors_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = tmp_path / "o"
    assert (
        main(["data", "prepare", "--tokenizer", "char", "--input", str(tmp_path / "nope.txt"), "--out", str(out)]) == 2
    )
    assert "input file not found" in _one_line_error(capsys)
    assert main(["data", "prepare", "--tokenizer", "char", "--input", str(empty), "--out", str(out)]) == 2
    assert "corpus is empty" in _one_line_error(capsys)
    assert (
        main(["data", "prepare", "--tokenizer", str(tmp_path / "no_tok"), "--input", str(empty), "--out", str(out)])
        == 2
    )
    assert "--tokenizer must be 'char' or a saved tokenizer directory" in _one_line_error(capsys)

    text = tmp_path / "t.txt"
    text.write_text("some text\n" * 10)
    ok = ["data", "prepare", "--tokenizer", "char", "--input", str(text), "--out", str(out), "--quiet"]
    assert main(ok) == 0
    capsys.readouterr()
    assert main(ok) == 2
    assert "already holds a prepared corpus (meta.json); pass --overwrite" in _one_line_error(capsys)
    assert main([*ok, "--overwrite"]) == 0
    assert main([*ok, "--overwrite", "--val-fraction", "1.0"]) == 2
    assert "val_fraction must be a number in [0, 1)" in _one_line_error(capsys)


def test_download_from_local_file_with_wrong_hash(tmp_path, capsys):
    fake = tmp_path / "fake.txt"
    fake.write_text("not the corpus\n")
    out = tmp_path / "data"
    assert main(["data", "download", "tiny_shakespeare", "--out", str(out), "--from", str(fake)]) == 2
    err = _one_line_error(capsys)
    assert "is not tiny_shakespeare" in err and "nothing was saved" in err
    assert not out.exists() or list(out.iterdir()) == []


def test_download_from_the_real_file(tmp_path, shakespeare_path, capsys):
    if shakespeare_path is None:
        pytest.skip("tiny Shakespeare is not beside the repository (../shared/data)")
    out = tmp_path / "data"
    assert main(["data", "download", "tiny_shakespeare", "--out", str(out), "--from", str(shakespeare_path)]) == 0
    assert (out / "tiny_shakespeare.txt").read_bytes() == shakespeare_path.read_bytes()
    assert "sha256 verified" in capsys.readouterr().out


def test_download_without_network_names_from(tmp_path, capsys, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert main(["data", "download", "tiny_shakespeare", "--out", str(tmp_path / "d")]) == 2
    err = _one_line_error(capsys)
    assert err.startswith("llm-lab: error: could not download tiny_shakespeare from https://raw.githubusercontent")
    assert "pass --from PATH" in err
    # Where the file can be fetched by other means, and how to recognise it.
    assert f"fetch {TINY_SHAKESPEARE.url} elsewhere (1,115,394 bytes, sha256 {TINY_SHAKESPEARE.sha256})" in err
    assert not (tmp_path / "d" / "tiny_shakespeare.txt").exists()


def test_download_unreachable_mirror_in_a_subprocess(tmp_path):
    """The real console path: a refused loopback connection ends in one line naming --from and exit code 2."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "llm_lab",
            "data",
            "download",
            "tiny_shakespeare",
            "--out",
            str(tmp_path / "d"),
            "--url",
            _closed_port_url(),
            "--timeout",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path),
             **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}},
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--from PATH" in proc.stderr and "Traceback" not in proc.stderr
    assert TINY_SHAKESPEARE.url in proc.stderr and TINY_SHAKESPEARE.sha256 in proc.stderr


def test_prepare_overwrite_keeps_foreign_files_and_the_old_corpus(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("some text\n" * 10)
    out = tmp_path / "o"
    ok = ["data", "prepare", "--tokenizer", "char", "--input", str(text), "--out", str(out), "--quiet"]
    assert main(ok) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe not utf-8")
    assert main([*ok[:5], str(bad), *ok[6:], "--overwrite"]) == 2  # an input that cannot be read
    assert "bad.txt is not UTF-8 text" in _one_line_error(capsys)
    (out / "notes.md").write_text("mine")
    assert main([*ok[:5], str(bad), *ok[6:], "--overwrite"]) == 2  # refused before the inputs are read
    assert "holds notes.md, which llm-lab did not write; move it out" in _one_line_error(capsys)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before | {"notes.md": b"mine"}
    assert load_prepared(out)[2]["total_tokens"] == 100


def test_shards_have_a_lower_bound(tmp_path, small_text, capsys):
    """``--shard-tokens 1`` wrote one file per id (7040 files for a 7 kB text, in 46 s): 1024 ids at least."""
    src = tmp_path / "input.txt"
    src.write_text(small_text, encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        main(["data", "prepare", "--tokenizer", "char", "--input", str(src), "--out", str(tmp_path / "c"),
              "--shard-tokens", "1"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.endswith(
        "error: argument --shard-tokens: at least 1024 ids per shard (each shard is a file written, synced and "
        "opened by every reader), got 1\n"
    )
    assert not (tmp_path / "c").exists()
