"""`llm-lab sweep` and `llm-lab sweep report`: every bad input is one line naming the fault, before any run."""

from __future__ import annotations

import json
import re

import pytest

from llm_lab.cli import main

TINY = {
    "model": {"context_length": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
    "train": {"batch_size": 4, "max_steps": 4, "warmup_steps": 1, "eval_interval": 2, "eval_batches": 2,
              "device": "cpu", "precision": "fp32"},
}  # fmt: skip


@pytest.fixture
def files(tmp_path, small_text):
    (tmp_path / "corpus.txt").write_text(small_text)
    (tmp_path / "base.json").write_text(json.dumps(TINY))
    (tmp_path / "file.json").write_text(json.dumps({"settings": {"a": {}, "b": {"model.n_layer": "x"}}}))
    other = tmp_path / "other"
    other.mkdir()
    manifest = {"kind": "llm-lab sweep", "format_version": 1, "base": {}, "data": "x", "time_budget_s": None,
                "settings": [], "seeds": [1], "baseline": "a"}  # fmt: skip
    (other / "sweep.json").write_text(json.dumps(manifest))
    return tmp_path


BASE = ["sweep", "--config", "base.json", "--data", "corpus.txt"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sweep", "--data", "corpus.txt", "--out", "o", "--grid", "model.norm=rmsnorm"], "a sweep needs --config"),
        ([*BASE, "--out", "o"], "nothing to compare"),
        ([*BASE, "--out", "o", "--grid", "model.nope=1,2"], "setting 'nope=1': .*unknown key 'nope'"),
        ([*BASE, "--out", "o", "--grid", "model.n_layer=1,two"], "setting 'n_layer=two'"),
        ([*BASE, "--out", "o", "--grid", "model.n_head=2,3"], "setting 'n_head=3'.*n_head"),
        ([*BASE, "--out", "o", "--grid", "model.norm=rmsnorm", "--seeds", "0"], "--seeds must be at least 1"),
        # Before: a billion-seed list grew to 23 GiB; a 1e12 s budget calibrated 3.2e14 steps. Both until killed.
        ([*BASE, "--out", "o", "--grid", "model.norm=rmsnorm", "--seeds", "1000000000"], "at most 1000 .*"
         "got 1000000000"),
        ([*BASE, "--out", "o", "--grid", "model.norm=rmsnorm", "--time-budget", "1e12"], "more than a week per run"),
        ([*BASE, "--out", "o", "--grid", "model.norm=rmsnorm", "--grid", "model.norm=layernorm"], "given twice"),
        ([*BASE, "--out", "o", "--sweep-file", "file.json"], "setting 'b'"),
        ([*BASE, "--out", "o", "--grid", "model.norm=rmsnorm", "--baseline", "x"], "baseline 'x' is not a setting"),
        ([*BASE, "--out", "other", "--grid", "model.norm=rmsnorm"], "other holds another sweep"),
        ([*BASE, "--out", "o", "--grid", "train.seed=1,2"], "use --seeds"),
        (["sweep", "report", "nowhere"], "nowhere holds no sweep"),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_written(argv, message, files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    before = sorted(p.relative_to(files) for p in files.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm-lab: error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert sorted(p.relative_to(files) for p in files.rglob("*")) == before


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        # an axis of 5000 values was accepted (5000 runs, under the 10,000-run cap) and ran for hours
        (["--grid", "train.lr=" + ",".join(str(i / 1e5) for i in range(1, 5001))],
         "llm-lab: error: grid train.lr: 5,000 values; one grid axis may have at most 100"),
        (["--grid", "train.lr=0.001,0.002", "--eval-limit", "-5"], "--eval-limit: expected a positive integer"),
    ],
)  # fmt: skip
def test_one_axis_and_the_eval_limit_are_bounded(tmp_path, capsys, flags, message):
    config = tmp_path / "tiny.json"
    config.write_text('{"model": {"context_length": 8, "n_layer": 1, "n_head": 2, "n_embd": 8}}')
    (tmp_path / "corpus.txt").write_text("to be or not to be\n" * 20)
    argv = ["sweep", "--config", str(config), "--data", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "sw")]
    try:
        code = main([*argv, *flags])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "sw").exists()
