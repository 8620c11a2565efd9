"""Helpers shared by the `llm-lab train` CLI tests (tests/cli is on pytest's path)."""

from __future__ import annotations

from pathlib import Path

from llm_lab.cli import main


def _train(*args) -> int:
    """``llm-lab train ARGS --quiet``; returns the exit code."""
    return main(["train", *map(str, args), "--quiet"])


def _snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes: equal snapshots mean nothing was changed."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _error(capsys) -> str:
    """The captured stderr, checked to be one line and no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err
