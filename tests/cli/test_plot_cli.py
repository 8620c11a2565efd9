"""Tests for `llm-lab plot` and llm_lab/utils/plotting.py: reading metrics.csv and drawing one or several runs."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

import llm_lab.cli
from llm_lab.cli import main
from llm_lab.utils.plotting import plot_runs, read_metric_columns

COLUMNS = ["step", "tokens", "lr", "train_loss", "val_loss", "grad_norm", "tokens_per_second", "mfu", "elapsed_s"]


@pytest.fixture(autouse=True)
def _only_this_command_group(monkeypatch):
    monkeypatch.setattr(llm_lab.cli, "_COMMAND_MODULES", ("plot",))


def _write_run(run_dir: Path, steps: int = 20, eval_every: int = 5, scale: float = 1.0) -> Path:
    """A metrics.csv as the Trainer writes it: val_loss only on evaluation rows."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for step in range(1, steps + 1):
            loss = scale * (4.0 * np.exp(-step / 8) + 1.0)
            val = f"{loss + 0.1:.4f}" if step % eval_every == 0 else ""
            writer.writerow([step, step * 512, 1e-3, f"{loss:.4f}", val, 0.5, 1000.0, 0.01, step * 0.1])
    return run_dir


def _share_of_colour(png: Path, colour: str) -> float:
    """Fraction of pixels within a small distance of a matplotlib colour (e.g. "C0")."""
    image = imread(png)[..., :3]
    distance = np.abs(image - np.array(to_rgb(colour))).sum(axis=-1)
    return float((distance < 0.08).mean())


def test_read_metrics_keeps_empty_cells_as_none(tmp_path):
    run = _write_run(tmp_path / "run")
    columns = read_metric_columns(run)
    assert list(columns) == COLUMNS
    assert columns["step"][:3] == [1.0, 2.0, 3.0]
    assert columns["val_loss"][:5] == [None, None, None, None, pytest.approx(4.0 * np.exp(-5 / 8) + 1.1, abs=1e-4)]
    assert read_metric_columns(run / "metrics.csv") == columns


def test_plot_one_run_default_out(tmp_path, capsys):
    run = _write_run(tmp_path / "run")
    assert main(["plot", str(run)]) == 0
    png = run / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = imread(png).shape[:2]
    assert width > height  # two panels side by side: step and tokens
    assert _share_of_colour(png, "C0") > 0.001  # the curves are drawn
    assert f"wrote {png}" in capsys.readouterr().out


def test_plot_several_runs_one_colour_each(tmp_path):
    a = _write_run(tmp_path / "a")
    b = _write_run(tmp_path / "b", scale=1.3)
    out = tmp_path / "figs" / "compare.png"
    assert main(["plot", str(a), str(b), "--out", str(out), "--labels", "base", "wider", "--x", "tokens"]) == 0
    assert _share_of_colour(out, "C0") > 0.001 and _share_of_colour(out, "C1") > 0.001
    single = tmp_path / "single.png"
    plot_runs({"base": a}, single, x_axes=("tokens",))
    assert _share_of_colour(single, "C1") < 0.0001  # one run: no second colour


def test_plot_runs_library_api_for_other_metrics(tmp_path):
    a = _write_run(tmp_path / "a")
    out = plot_runs([a], tmp_path / "tps.svg", x_axes=("elapsed_s",), metrics=("tokens_per_second",), title="speed")
    assert out.read_text().lstrip().startswith("<?xml")


def test_plot_errors(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "no metrics.csv at" in capsys.readouterr().err
    a = _write_run(tmp_path / "a")
    b = _write_run(tmp_path / "b")
    assert main(["plot", str(a), str(b)]) == 2
    assert "--out FILE.png" in capsys.readouterr().err
    assert main(["plot", str(a), str(b), "--out", str(tmp_path / "x.png"), "--labels", "only-one"]) == 2
    assert "--labels gives 1 label for 2 runs" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.csv").write_text(",".join(COLUMNS) + "\n")
    with pytest.raises(ValueError, match="has no rows yet"):
        plot_runs(empty, tmp_path / "e.png")
    with pytest.raises(ValueError, match="has no column 'perplexity'; it has: step, tokens"):
        plot_runs(a, tmp_path / "p.png", metrics=("perplexity",))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.csv").write_text("step,train_loss\n1,oops\n")
    with pytest.raises(ValueError, match=r"metrics.csv:2: column 'train_loss' holds 'oops', not a number"):
        read_metric_columns(bad)
    assert not (tmp_path / "e.png").exists() and not (tmp_path / "p.png").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        # was "'utf-8' codec can't decode byte 0xff in position 55", naming neither the file nor the line
        (b"step,train_loss\n1,2.0\n2,\xff\xfe\n", r"metrics\.csv:3: not UTF-8 text \(byte 0xff\); expected UTF-8 CSV"),
        # extra fields were read under a None key and ignored
        (b"step,train_loss\n1,2.0\n2,1.5,9\n", r"metrics\.csv:3: 3 fields, but the header has 2"),
        # a quoted field spanning lines: the row is named by the line it starts on
        (b'step,train_loss\n1,"2\n0"\n2,oops\n', r"metrics\.csv:2: column 'train_loss' holds '2\\n0', not a number"),
    ],
)
def test_a_damaged_metrics_file_is_one_line_naming_the_file_and_line(tmp_path, capsys, monkeypatch, content, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_bytes(content)
    assert main(["plot", str(run), "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.match(rf"llm-lab: error: .*run/{message}", err), err
    monkeypatch.setattr(llm_lab.cli, "_COMMAND_MODULES", ("experiment",))  # the report reads the same way
    assert main(["experiment", "collect", str(tmp_path), "--out", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.match(rf"llm-lab: error: .*run/{message}", err), err
    assert not (tmp_path / "p.png").exists() and not (tmp_path / "r.md").exists()
