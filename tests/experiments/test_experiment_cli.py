"""`llm-lab experiment posenc|collect` and the scripts that wrap them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import llm_lab.cli
from llm_lab.cli import main
from llm_lab.experiments.tables import read_csv

from .conftest import as_float

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--set", "model.context_length=16", "--set", "model.n_layer=1", "--set", "model.n_embd=16",
    "--set", "train.max_steps=4", "--set", "train.eval_interval=2", "--set", "train.eval_batches=2",
    "--set", "train.batch_size=4",
]


@pytest.fixture(autouse=True)
def _only_this_command_group(monkeypatch):
    monkeypatch.setattr(llm_lab.cli, "_COMMAND_MODULES", ("experiment",))


def test_posenc_then_collect(tmp_path, small_text, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(small_text)
    out = tmp_path / "experiments" / "posenc"
    argv = ["experiment", "posenc", "--quick", "--data", str(corpus), "--out", str(out)]
    argv += ["--encodings", "rope", "learned"]
    assert main(argv + TINY) == 0
    text = capsys.readouterr().out
    assert "| rope " in text and "| learned " in text and "| alibi" not in text
    rows = read_csv(out / "results.csv")
    assert [r["pos_encoding"] for r in rows] == ["rope", "learned"]
    assert all(r["steps"] == "4" for r in rows)

    assert main(["experiment", "collect", str(tmp_path / "experiments")]) == 0
    report = read_csv(tmp_path / "experiments" / "report" / "report.csv")
    assert sorted(r["run"] for r in report) == ["posenc/runs/learned-seed1337", "posenc/runs/rope-seed1337"]
    assert all(as_float(r["best_val_loss"]) > 0 for r in report)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["experiment", "posenc", "--data", "missing.txt"], "does not exist"),
        (["experiment", "posenc", "--data", ".", "--encodings", "xpos"], "unknown positional encoding"),
        (["experiment", "posenc", "--data", ".", "--set", "train.nope=1"], "nope"),
        (["experiment", "posenc", "--data", ".", "--seeds", "0"], "--seeds must be at least 1"),
        (["experiment", "collect", "nowhere"], "is not a directory"),
    ],
)
def test_bad_input_is_a_one_line_error(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm-lab: error: ") and message in err and err.count("\n") == 1


@pytest.mark.slow
def test_quick_study_on_tiny_shakespeare(shakespeare_path, tmp_path):
    """The script's --quick mode on the real corpus: all five encodings, in about a minute."""
    if shakespeare_path is None:
        pytest.skip("tiny Shakespeare is not beside the repository (../shared/data)")
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "p3_train_posenc.py"), "--quick", "--data", str(shakespeare_path),
         "--out", str(tmp_path / "posenc")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_csv(tmp_path / "posenc" / "results.csv")
    assert [r["pos_encoding"] for r in rows] == ["learned", "sinusoidal", "rope", "alibi", "none"]
    for row in rows:
        assert as_float(row["val_loss"]) < 4.2  # below the uniform guess over 65 characters, ln 65 = 4.17
    assert (tmp_path / "posenc" / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    collect = subprocess.run(
        # --out: the default posenc/report is the study's own sweep report, which collect may not replace
        [sys.executable, str(REPO / "scripts" / "p1_collect_phase4_numbers.py"), str(tmp_path / "posenc"), "--out",
         str(tmp_path / "collected")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert collect.returncode == 0, collect.stderr[-2000:]
    assert "runs/rope-seed1337" in collect.stdout
