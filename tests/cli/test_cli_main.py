"""The `llm-lab` entry point itself: user mistakes and file-system refusals are one line and exit code 2."""

from __future__ import annotations

import llm_lab.cli
from llm_lab.cli import main


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: llm-lab" in capsys.readouterr().out


def test_an_os_error_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(llm_lab.cli, "_COMMAND_MODULES", ("data",))
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world\n" * 20)
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    code = main(["data", "prepare", "--tokenizer", "char", "--input", str(corpus), "--out", str(blocker / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("llm-lab: error: ") and "Not a directory" in err and len(err.splitlines()) == 1
