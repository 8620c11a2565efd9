"""`llm-lab sweep --eval-tasks`: each run scored on harness tasks, summarised over seeds like the loss columns."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

pytest.importorskip("lm_eval")
from harness_tasks import write_tasks  # noqa: E402

from llm_lab.cli import main  # noqa: E402
from llm_lab.core.harness import LabLM, evaluate_tasks  # noqa: E402
from llm_lab.core.package.io import load_run  # noqa: E402

TINY = {
    "model": {"context_length": 32, "n_layer": 1, "n_head": 2, "n_embd": 16},
    "train": {"batch_size": 4, "max_steps": 4, "warmup_steps": 1, "eval_interval": 2, "eval_batches": 2,
              "device": "cpu", "precision": "fp32"},
}  # fmt: skip


@pytest.fixture
def files(tmp_path, small_text):
    (tmp_path / "corpus.txt").write_text(small_text + "\nthe quick brown fox jumps over the lazy dog. to be, or not\n")
    (tmp_path / "base.json").write_text(json.dumps(TINY))
    write_tasks(tmp_path / "tasks")
    return tmp_path


def test_unknown_eval_task_is_one_line_before_any_run(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    argv = ["sweep", "--config", "base.json", "--data", "corpus.txt", "--out", "sw", "--grid", "model.norm=rmsnorm"]
    assert main([*argv, "--eval-tasks", "tiny_mc", "--eval-include-path", "nowhere"]) == 2
    assert "--include-path: no such folder: nowhere" in capsys.readouterr().err
    assert not (files / "sw").exists()


@pytest.mark.slow  # four tiny runs, each then scored by the harness
def test_sweep_scores_each_run_and_summarises_over_seeds(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    argv = ["sweep", "--config", "base.json", "--data", "corpus.txt", "--out", "sw", "--grid",
            "model.norm=layernorm,rmsnorm", "--seeds", "2", "--quiet", "--eval-tasks", "tiny_mc,tiny_gen",
            "--eval-include-path", "tasks"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "tiny_mc:acc" in out and "tiny_gen:exact_match" in out
    with open(files / "sw" / "results.csv", newline="") as f:
        rows = {row["setting"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"norm=layernorm", "norm=rmsnorm"}
    for setting, row in rows.items():
        # Each run's score, evaluated again from its checkpoint, averages to the reported mean.
        norm = setting.split("=")[1]
        runs = sorted(p for p in (files / "sw" / "runs").iterdir() if f"norm={norm}" in p.name or norm in p.name)
        assert len(runs) == 2, runs
        accs = []
        for run in runs:
            _, tokenizer, model = load_run(run, checkpoint="last")
            results = evaluate_tasks(LabLM(model, tokenizer), ["tiny_mc"], include_path=files / "tasks")
            accs.append(results["results"]["tiny_mc"]["acc,none"])
        assert float(row["tiny_mc:acc_mean"]) == pytest.approx(statistics.fmean(accs))
        assert row["tiny_mc:acc_std"] != ""
    baseline = next(row for row in rows.values() if row["tiny_mc:acc_significance"] == "baseline")
    other = next(row for row in rows.values() if row is not baseline)
    expected_delta = float(other["tiny_mc:acc_mean"]) - float(baseline["tiny_mc:acc_mean"])
    assert float(other["tiny_mc:acc_delta"]) == pytest.approx(expected_delta)
    assert other["tiny_mc:acc_significance"] in {"n.s.", "*", "**", "***", "n/a"}
