"""Tests for llm_lab/core/data/download.py. Nothing here touches the internet: downloads are served by a
local HTTP server on 127.0.0.1, and the offline path uses a closed loopback port or a failing opener."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import urllib.error
from contextlib import contextmanager
from pathlib import Path

import pytest

from llm_lab.core.data import download as dl
from llm_lab.core.data.download import (
    TINY_SHAKESPEARE,
    ChecksumError,
    DownloadError,
    RemoteFile,
    download_dataset,
    download_tiny_shakespeare,
)

SELF_MADE = b"Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n" * 50


@pytest.fixture
def self_made_spec(monkeypatch) -> RemoteFile:
    """A corpus known to the registry whose bytes the tests make themselves (so the tests run anywhere)."""
    spec = RemoteFile(
        name="sonnet",
        url="http://127.0.0.1:9/never-used",
        filename="sonnet.txt",
        sha256=hashlib.sha256(SELF_MADE).hexdigest(),
        size=len(SELF_MADE),
    )
    monkeypatch.setitem(dl.DATASETS, spec.name, spec)
    return spec


@contextmanager
def serve(payload: bytes):
    """Serve ``payload`` at http://127.0.0.1:PORT/ from a thread; yield the URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server API)
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):  # keep test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/input.txt"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/input.txt"  # nothing listens there now: connection refused


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_canonical_source():
    assert TINY_SHAKESPEARE.url == (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
    )
    assert TINY_SHAKESPEARE.sha256 == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert TINY_SHAKESPEARE.size == 1_115_394


def test_download_over_http_checks_and_saves(self_made_spec, tmp_path):
    with serve(SELF_MADE) as url:
        path = download_dataset("sonnet", tmp_path / "data", url=url, timeout=5)
    assert path == tmp_path / "data" / "sonnet.txt"
    assert path.read_bytes() == SELF_MADE
    assert _files(tmp_path / "data") == ["sonnet.txt"]


@pytest.mark.parametrize("payload", [SELF_MADE[:-1] + b"!", SELF_MADE + b"more", SELF_MADE[:100]])
def test_download_with_wrong_bytes_keeps_nothing(self_made_spec, tmp_path, payload):
    with serve(payload) as url, pytest.raises(ChecksumError, match="nothing was saved"):
        download_dataset("sonnet", tmp_path, url=url, timeout=5)
    assert _files(tmp_path) == []  # neither the file nor a temporary one


def test_download_wrong_bytes_do_not_replace_a_good_file(self_made_spec, tmp_path):
    target = tmp_path / "data" / "sonnet.txt"
    target.parent.mkdir()
    with serve(SELF_MADE) as url:
        download_dataset("sonnet", target.parent, url=url, timeout=5)
    with serve(b"x" * len(SELF_MADE)) as url:  # our good file is kept: nothing is fetched
        download_dataset("sonnet", target.parent, url=url, timeout=5)
    assert target.read_bytes() == SELF_MADE


@pytest.mark.parametrize("how", ["from the network", "--from a file"])
def test_another_file_of_that_name_is_the_users_and_is_refused_untouched(self_made_spec, tmp_path, how):
    """A file of the user's under the corpus's name (edited, or another text) was replaced by the download."""
    target = tmp_path / "sonnet.txt"
    target.write_bytes(b"my own edited sonnet")
    (tmp_path / "good.txt").write_bytes(SELF_MADE)
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "sonnet.txt").symlink_to(tmp_path / "missing.txt")  # a dangling link is not ours either
    refused = r"sonnet\.txt exists and is not sonnet \(its size or sha256 differ\), so it is left as it is: move it"
    for out in (tmp_path, tmp_path / "link"):
        with serve(SELF_MADE) as url, pytest.raises(FileExistsError, match=refused):
            if how == "--from a file":
                download_dataset("sonnet", out, from_path=tmp_path / "good.txt")
            else:
                download_dataset("sonnet", out, url=url, timeout=5)
    assert target.read_bytes() == b"my own edited sonnet" and (tmp_path / "link" / "sonnet.txt").is_symlink()


def test_no_network_is_a_download_error(self_made_spec, tmp_path):
    with pytest.raises(DownloadError, match=r"could not download sonnet from http://127\.0\.0\.1:\d+/input.txt"):
        download_dataset("sonnet", tmp_path / "d", url=_closed_port_url(), timeout=5)
    assert _files(tmp_path / "d") == []


def test_failing_opener_is_a_download_error(tmp_path):
    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    with pytest.raises(DownloadError, match="raw.githubusercontent.com.*Temporary failure in name resolution"):
        download_tiny_shakespeare(tmp_path, urlopen=offline)


def test_a_good_file_in_place_needs_no_network(self_made_spec, tmp_path):
    (tmp_path / "sonnet.txt").write_bytes(SELF_MADE)

    def must_not_be_called(url, timeout):
        raise AssertionError("the network was used")

    assert download_dataset("sonnet", tmp_path, urlopen=must_not_be_called) == tmp_path / "sonnet.txt"


def test_from_path_copies_and_checks(self_made_spec, tmp_path):
    src = tmp_path / "elsewhere.txt"
    src.write_bytes(SELF_MADE)
    path = download_dataset("sonnet", tmp_path / "out", from_path=src)
    assert path.read_bytes() == SELF_MADE


def test_from_path_with_the_wrong_file_keeps_nothing(tmp_path):
    src = tmp_path / "not_shakespeare.txt"
    src.write_bytes(b"To be or not to be\n" * 1000)
    out = tmp_path / "out"
    expected_hash = hashlib.sha256(src.read_bytes()).hexdigest()
    with pytest.raises(ChecksumError, match=f"19,000 bytes with sha256 {expected_hash}, expected 1,115,394 bytes"):
        download_tiny_shakespeare(out, from_path=src)
    assert _files(out) == []
    with pytest.raises(FileNotFoundError, match="--from file not found"):
        download_tiny_shakespeare(out, from_path=tmp_path / "missing.txt")


def test_from_path_with_the_real_corpus(shakespeare_path, tmp_path):
    if shakespeare_path is None:
        pytest.skip("tiny Shakespeare is not beside the repository (../shared/data)")
    path = download_tiny_shakespeare(tmp_path, from_path=shakespeare_path)
    assert path == tmp_path / "tiny_shakespeare.txt"
    assert path.read_bytes() == shakespeare_path.read_bytes()


def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'wikitext'; known: .*tiny_shakespeare"):
        download_dataset("wikitext", tmp_path)


def test_tinystories_is_known_with_its_published_hashes():
    """The TinyStories V2 files as the Hugging Face dataset publishes them (Git LFS sha256); nothing downloads."""
    train, valid = dl.DATASETS["tinystories"], dl.DATASETS["tinystories_valid"]
    assert train.url == "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt"
    assert train.sha256 == "6418d412de72888f52b5142c761ac21a582f7d1166f0bfbdb5f03ccfdec90443" and train.size is None
    assert valid.sha256 == "6874bae9a4c1a4e7edcf0e53b86c17817e9cf881fc75ff2368da457b80c0585d"
    assert valid.size == 22_502_601 and valid.separator == train.separator == "<|endoftext|>"


def test_a_file_known_by_its_hash_alone(tmp_path, monkeypatch):
    """size None: the sha256 decides, for a copy with --from and for a file already in place."""
    spec = RemoteFile(name="stories", url="http://127.0.0.1:9/never", filename="stories.txt",
                      sha256=hashlib.sha256(SELF_MADE).hexdigest(), size=None, separator="<|endoftext|>")
    monkeypatch.setitem(dl.DATASETS, spec.name, spec)
    good = tmp_path / "good.txt"
    good.write_bytes(SELF_MADE)
    path = download_dataset("stories", tmp_path / "data", from_path=good)
    assert path.read_bytes() == SELF_MADE
    assert download_dataset("stories", tmp_path / "data") == path  # in place, hash right: no network
    bad = tmp_path / "bad.txt"
    bad.write_bytes(SELF_MADE + b"x")
    with pytest.raises(ChecksumError, match=r"is not stories: .* bytes with sha256 \w+, expected sha256 "):
        download_dataset("stories", tmp_path / "other", from_path=bad)
    assert not (tmp_path / "other" / "stories.txt").exists()
