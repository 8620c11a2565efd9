"""Input paths are described by what they are: a FIFO, a socket, a device or a directory is never "not found"."""

from __future__ import annotations

import os
import socket

import pytest

from llm_lab.cli import main
from llm_lab.utils.paths import check_input_file, path_kind


@pytest.fixture
def things(tmp_path):
    (tmp_path / "file.txt").write_text("text")
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "sock"))
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    yield tmp_path
    listener.close()


def test_path_kind_names_each_kind(things):
    assert path_kind(things / "file.txt") == "a regular file"
    assert path_kind(things / "folder") == "a directory"
    assert path_kind(things / "fifo") == "a FIFO (named pipe)"
    assert path_kind(things / "sock") == "a socket"
    assert path_kind("/dev/null") == "a character device"
    assert path_kind(things / "missing") is None
    assert path_kind(things / "dangling") is None
    assert path_kind(things / "file.txt" / "inside") is None


@pytest.mark.parametrize(
    ("name", "error", "said"),
    [
        ("missing", FileNotFoundError, "does not exist"),
        ("folder", ValueError, "is a directory, not a file"),
        ("fifo", ValueError, r"is a FIFO \(named pipe\), not a file"),
        ("sock", ValueError, "is a socket, not a file"),
    ],
)
def test_check_input_file_says_what_is_there(things, name, error, said):
    assert check_input_file(things / "file.txt", "--data") == things / "file.txt"
    with pytest.raises(error, match=rf"^--data .*{name} {said}; give a text file$"):
        check_input_file(things / name, "--data")


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        # each said "does not exist" or "not found" of something that plainly exists
        (["train", "--config", "{cfg}", "--data", "{d}/fifo", "--out", "{d}/run"],
         "--data {d}/fifo is a FIFO (named pipe), not a file; give a text file or a prepared directory"),
        (["train", "--config", "{cfg}", "--data", "/dev/zero", "--out", "{d}/run"],
         "--data /dev/zero is a character device, not a file; give a text file or a prepared directory"),
        (["train", "--config", "{d}/folder", "--data", "{d}/file.txt", "--out", "{d}/run"],
         "config file {d}/folder is a directory, not a file; give a run config JSON file"),
        (["eval", "{d}/pkg", "--data", "{d}/sock"], "--data {d}/sock is a socket, not a file; give a UTF-8 text file"),
    ],
)  # fmt: skip
def test_the_commands_say_what_an_input_is(things, capsys, argv, said):
    cfg = things / "tiny.json"
    cfg.write_text('{"model": {"context_length": 8, "n_layer": 1, "n_head": 2, "n_embd": 8}}')
    argv = [a.format(d=things, cfg=cfg) for a in argv]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"llm-lab: error: {said.format(d=things)}\n"
    assert not (things / "run").exists()
