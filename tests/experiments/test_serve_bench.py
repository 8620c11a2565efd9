"""``llm-lab bench serve``: its settings checks and, in the slow suite, a whole quick run against real servers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from llm_lab.cli import main as cli_main
from llm_lab.experiments.serve_bench import ServeBenchSettings
from llm_lab.experiments.tables import read_csv


def test_settings_are_checked_before_anything_runs() -> None:
    with pytest.raises(ValueError, match="clients must be a positive integer, got 0"):
        ServeBenchSettings(clients=0)
    with pytest.raises(ValueError, match="n_embd=100 must be divisible by n_head=6"):
        ServeBenchSettings(n_embd=100)
    with pytest.raises(ValueError, match=r"a 24-character prompt and 300 new tokens do not fit a context of 256"):
        dataclasses.replace(ServeBenchSettings(), new_tokens=300)
    with pytest.raises(ValueError, match="unknown decode dtype 'fp8'; choose one of: auto, fp32, bf16, int8"):
        ServeBenchSettings(dtype="fp8")


def test_bad_flag_is_a_one_line_cli_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["bench", "serve", "--clients", "0"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.endswith(
        "llm-lab bench serve: error: argument --clients: expected an integer from 1 to 256 (concurrent clients), "
        "got 0\n"
    )
    assert cli_main(["bench", "serve", "--dtype", "int4"]) == 2
    assert capsys.readouterr().err.strip() == (
        "llm-lab: error: unknown decode dtype 'int4'; choose one of: auto, fp32, bf16, int8"
    )


@pytest.mark.slow
def test_quick_run_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two real `llm-lab serve --dtype int8` subprocesses, 1 and 3 streamed clients: every request answered in full."""
    assert cli_main(["bench", "serve", "--quick", "--dtype", "int8", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| --max-batch 3 | 3       | 3        |" in printed
    rows = read_csv(tmp_path / "serve.csv")
    assert [(r["server"], r["clients"], r["requests"]) for r in rows] == [
        ("--max-batch 3", "1", "1"),
        ("--max-batch 3", "3", "3"),
        ("--max-batch 1", "1", "1"),
        ("--max-batch 1", "3", "3"),
    ]
    assert all(float(r["tokens_per_s"]) > 0 for r in rows)
    assert (tmp_path / "serve.md").read_text().startswith("# llm-lab bench serve")
