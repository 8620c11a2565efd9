"""The positional-encoding study (llm_lab/experiments/posenc.py) through the real Trainer, on tiny settings."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from llm_lab.core.model.config import POS_ENCODINGS
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.train.config import TrainerConfig
from llm_lab.experiments.posenc import (
    RESULT_COLUMNS,
    PosEncStudy,
    extrapolation_losses,
    quick_study_config,
    run_study,
)
from llm_lab.experiments.report import collect_runs
from llm_lab.experiments.tables import read_csv

from .conftest import as_float


def tiny_study_config(max_steps: int = 6):
    config = quick_study_config()
    return dataclasses.replace(
        config,
        model=MiniGPTConfig(context_length=16, n_layer=1, n_head=2, n_embd=16),
        train=TrainerConfig(
            batch_size=4, max_steps=max_steps, lr=3e-3, min_lr=3e-4, warmup_steps=1, eval_interval=3,
            eval_batches=2, log_interval=2, device="cpu", precision="fp32", seed=7,
        ),
    )


@pytest.fixture
def corpus(tmp_path, small_text):
    path = tmp_path / "corpus.txt"
    path.write_text(small_text)
    return path


def test_study_trains_every_encoding_and_writes_results(tmp_path, corpus, png_ok):
    study = PosEncStudy(tiny_study_config(), corpus, tmp_path / "study", progress=False)
    paths = run_study(study)

    rows = read_csv(paths["csv"])
    assert list(rows[0]) == list(RESULT_COLUMNS)
    assert [r["pos_encoding"] for r in rows] == list(POS_ENCODINGS)
    vocab = len(set(corpus.read_text()))
    n_params = {r["pos_encoding"]: int(r["parameters"]) for r in rows}
    # Only learned positions add parameters: a (context_length, n_embd) table.
    assert n_params["learned"] - n_params["rope"] == 16 * 16
    assert len({n_params[e] for e in POS_ENCODINGS if e != "learned"}) == 1
    for row in rows:
        assert int(row["steps"]) == 6 and int(row["tokens"]) == 6 * 4 * 16  # the same budget for everyone
        for column in ("train_loss", "val_loss", "best_val_loss"):
            assert 0 < as_float(row[column]) < math.log(vocab) + 1.0
        assert as_float(row["tokens_per_second"]) > 0
        if row["pos_encoding"] == "learned":
            assert row["val_loss_2x"] == "" and row["val_loss_2x_beyond"] == ""
        else:
            assert 0 < as_float(row["val_loss_2x"]) < 10 and 0 < as_float(row["val_loss_2x_beyond"]) < 10
        assert row["seeds"] == "1" and row["val_loss_std"] == ""  # one seed: no spread
        run_dir = study.out_dir / "runs" / f"{row['pos_encoding']}-seed7"
        assert (run_dir / "run.json").is_file() and (run_dir / "checkpoints" / "last.pt").is_file()

    md = paths["md"].read_text()
    assert "| encoding   |" in md and "val loss @2x ctx" in md and "6 steps of 4 x 16 tokens" in md
    png_ok(paths["png"])
    # The study's run directories are ordinary runs: the collector reads all five.
    collected, _, skipped = collect_runs(study.out_dir)
    assert sorted(r["run"] for r in collected) == sorted(f"runs/{e}-seed7" for e in POS_ENCODINGS) and not skipped


def test_extrapolation_loss_splits_into_seen_and_beyond_context():
    """On a causal model the first T positions of a 2T window see exactly what a T window sees, so
    ``2 * loss_2x - loss_beyond`` is the loss of the first halves, computed here with the original model."""
    torch.manual_seed(0)
    T = 8
    model = MiniGPT(MiniGPTConfig(vocab_size=11, context_length=T, n_layer=1, n_head=2, n_embd=16, pos_encoding="rope"))
    model.eval()
    ids = torch.randint(0, 11, (200,)).numpy()
    loss_2x, beyond = extrapolation_losses(model, ids, factor=2, batch_size=4, max_batches=2)
    starts = torch.arange(8) * 2 * T  # the 8 windows of 2T tokens that two batches of four cover
    x = torch.stack([torch.from_numpy(ids[s : s + T]) for s in starts.tolist()])
    y = torch.stack([torch.from_numpy(ids[s + 1 : s + T + 1]) for s in starts.tolist()])
    with torch.no_grad():
        logits, _ = model(x.long())
    first_half = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y.long()).item()
    assert 2 * loss_2x - beyond == pytest.approx(first_half, abs=1e-5)


def test_extrapolation_needs_an_encoding_without_a_table():
    model = MiniGPT(MiniGPTConfig(vocab_size=11, context_length=8, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match="no positions past context_length"):
        extrapolation_losses(model, list(range(11)) * 10, factor=2, batch_size=2, max_batches=1)
    rope = MiniGPT(dataclasses.replace(model.config, pos_encoding="rope"))
    with pytest.raises(ValueError, match="validation split too short for 2x context"):
        extrapolation_losses(rope, list(range(11)), factor=2, batch_size=2, max_batches=1)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"encodings": ("rope", "xpos")}, ValueError, "unknown positional encoding"),
        ({"encodings": ("rope", "rope")}, ValueError, "each encoding may appear once"),
        ({"extrapolation_factor": 1}, ValueError, "extrapolation_factor must be an integer of at least 2"),
        ({"data": "missing.txt"}, FileNotFoundError, "does not exist"),
    ],
)
def test_bad_study_settings(tmp_path, corpus, kwargs, error, message):
    arguments = {"base": tiny_study_config(), "data": corpus, "out_dir": tmp_path / "out"} | kwargs
    if "data" in kwargs:
        arguments["data"] = tmp_path / kwargs["data"]
    with pytest.raises(error, match=message):
        PosEncStudy(**arguments)


@pytest.mark.slow
def test_study_with_seeds_averages_the_runs_and_writes_the_sweep_report(tmp_path, corpus):
    """Two encodings x two seeds: each row of results.csv is the mean of its two runs (recomputed from their
    metrics.csv and the recorded extrapolation results), and report/ holds the sweep's statistics."""
    import json

    from llm_lab.core.train.metrics import read_metrics

    study = PosEncStudy(tiny_study_config(), corpus, tmp_path / "study", encodings=("rope", "learned"), seeds=(7, 8),
                        progress=False)  # fmt: skip
    paths = run_study(study)
    rows = {r["pos_encoding"]: r for r in read_csv(paths["csv"])}
    for encoding in ("rope", "learned"):
        finals = []
        for seed in (7, 8):
            metrics = read_metrics(study.out_dir / "runs" / f"{encoding}-seed{seed}" / "metrics.csv")
            finals.append([float(r["val_loss"]) for r in metrics if r["val_loss"]][-1])
        assert rows[encoding]["seeds"] == "2"
        assert float(rows[encoding]["val_loss"]) == pytest.approx(sum(finals) / 2, rel=1e-12)
    extras = [json.loads((study.out_dir / "finished" / f"rope-seed{s}.json").read_text())["extra"] for s in (7, 8)]
    assert float(rows["rope"]["val_loss_2x"]) == pytest.approx(sum(e["val_loss_2x"] for e in extras) / 2, rel=1e-12)
    assert rows["learned"]["val_loss_2x"] == ""
    report = {r["setting"]: r for r in read_csv(study.out_dir / "report" / "results.csv")}
    assert report["rope"]["significance"] == "baseline" and report["learned"]["p_value"] != ""
    assert "seeds 7, 8" in paths["md"].read_text()
