"""Collecting run directories into one report (llm_lab/experiments/report.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.experiments.report import REPORT_COLUMNS, collect_runs, find_runs, write_report
from llm_lab.experiments.tables import read_csv

from .conftest import as_float

METRICS = ["step", "tokens", "lr", "train_loss", "val_loss", "grad_norm", "tokens_per_second", "mfu", "elapsed_s"]


def make_run(run_dir: Path, rows: list[dict], model: dict | None = None, train: dict | None = None) -> Path:
    """A run directory as the Trainer writes it: run.json and metrics.csv (val_loss only on evaluation rows)."""
    run_dir.mkdir(parents=True)
    if model is not None:
        (run_dir / "run.json").write_text(json.dumps({"model": model, "train": train or {}}))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRICS)
        writer.writeheader()
        writer.writerows(rows)
    return run_dir


def rows_for(steps: int, loss0: float, tps: list[float]) -> list[dict]:
    return [
        {
            "step": s, "tokens": s * 100, "lr": 1e-3, "train_loss": loss0 - 0.1 * s,
            "val_loss": loss0 - 0.1 * s + 0.05 if s % 2 == 0 else "", "grad_norm": 1.0,
            "tokens_per_second": tps[s - 1], "mfu": tps[s - 1] / 1e5, "elapsed_s": s,
        }
        for s in range(1, steps + 1)
    ]


MODEL = {"vocab_size": 65, "context_length": 32, "n_layer": 2, "n_head": 2, "n_embd": 32}


def test_report_summarises_every_run(tmp_path, png_ok):
    root = tmp_path / "experiments"
    train = {"precision": "bf16", "batch_size": 8}
    make_run(root / "a", rows_for(4, 3.0, [10.0, 1000.0, 1200.0, 1100.0]), MODEL, train)
    make_run(root / "group" / "b", rows_for(2, 2.5, [5.0, 700.0]))  # no run.json: config cells stay empty
    (root / "empty").mkdir()
    (root / "empty" / "metrics.csv").write_text(",".join(METRICS) + "\n")  # started, nothing logged yet

    assert [p.relative_to(root).as_posix() for p in find_runs(root)] == ["a", "empty", "group/b"]
    paths = write_report(root, tmp_path / "report", title="Phase 4")
    rows = read_csv(paths["csv"])
    assert list(rows[0]) == list(REPORT_COLUMNS)
    a, b = rows
    assert a["run"] == "a" and b["run"] == "group/b"
    assert a["config"] == "L2 H2 C32 T32 V65 learned/layernorm/gelu"
    assert int(a["parameters"]) == MiniGPT(MiniGPTConfig(**MODEL)).num_parameters()
    assert (a["precision"], a["batch_size"], a["steps"], a["tokens"]) == ("bf16", "8", "4", "400")
    assert as_float(a["train_loss"]) == pytest.approx(2.6)
    assert as_float(a["best_val_loss"]) == pytest.approx(2.65)  # min over the evaluation rows (steps 2 and 4)
    assert as_float(a["tokens_per_second"]) == 1100.0  # median of the rows after the warm-up row
    assert as_float(a["mfu"]) == pytest.approx(0.011)
    assert b["config"] == "" and b["parameters"] == "" and as_float(b["tokens_per_second"]) == 700.0

    md = paths["md"].read_text()
    assert md.startswith("# Phase 4") and "2 run(s)" in md and "skipped" in md and "empty" in md
    png_ok(paths["png"])


def test_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        write_report(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "runs").mkdir()
    with pytest.raises(ValueError, match="no run directories with logged steps"):
        write_report(tmp_path / "runs", tmp_path / "out")
    assert collect_runs(tmp_path / "runs") == ([], [], [])
    run = make_run(tmp_path / "runs" / "a", rows_for(2, 3.0, [1.0, 2.0]), MODEL)
    (run / "run.json").write_text('{"model": ')
    with pytest.raises(ValueError, match=r"a/run\.json: not valid JSON"):
        write_report(tmp_path / "runs", tmp_path / "out")
    (run / "run.json").write_text("[]")
    with pytest.raises(ValueError, match=r"a/run\.json: expected a JSON object"):
        write_report(tmp_path / "runs", tmp_path / "out")


def test_report_shows_the_precision_and_threads_that_ran(tmp_path):
    """run.json says what was asked ("auto"); runtime.json, written by the Trainer, what ran."""
    root = tmp_path / "runs"
    run = make_run(root / "a", rows_for(2, 3.0, [10.0, 20.0]), MODEL, {"precision": "auto", "batch_size": 8})
    (run / "runtime.json").write_text(json.dumps({"device": "cpu", "precision": "bf16", "threads": 1}))
    make_run(root / "old", rows_for(2, 3.0, [10.0, 20.0]), MODEL, {"precision": "auto"})  # before runtime.json
    a, old = collect_runs(root)[0]
    assert (a["precision"], a["threads"]) == ("bf16", 1)
    assert (old["precision"], old["threads"]) == ("auto", None)


def test_collect_defaults_to_the_folders_the_scripts_write(tmp_path, monkeypatch, capsys):
    from llm_lab.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["experiment", "collect"]) == 2
    assert "no runs or experiments folder here" in capsys.readouterr().err
    make_run(tmp_path / "runs" / "hello", rows_for(2, 3.0, [10.0, 20.0]), MODEL)  # scripts/p1_train_char.py
    make_run(tmp_path / "experiments" / "p2_bpe", rows_for(2, 3.0, [10.0, 20.0]), MODEL)  # scripts/p2_train_bpe.py
    assert main(["experiment", "collect"]) == 0
    rows = read_csv(tmp_path / "experiments" / "report" / "report.csv")
    assert [row["run"] for row in rows] == ["runs/hello", "experiments/p2_bpe"]


def test_a_run_whose_last_validation_loss_is_minus_inf_is_marked_diverged(tmp_path):
    """Before: the -inf row was skipped and 2.65 (an earlier evaluation) was reported as final and best."""
    rows = rows_for(4, 3.0, [10.0, 1000.0, 1200.0, 1100.0])
    rows[-1]["val_loss"] = float("-inf")
    make_run(tmp_path / "runs" / "a", rows, MODEL)
    paths = write_report(tmp_path / "runs", tmp_path / "report")
    (row,) = read_csv(paths["csv"])
    assert row["val_loss"] == "-inf" and row["best_val_loss"] == ""
    assert "Diverged (the last logged loss is NaN or infinite; no best loss): `a` (val_loss -inf at step 4)" in (
        paths["md"].read_text()
    )
