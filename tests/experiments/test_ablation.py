"""The speed-run ablation: arms from the registries, both budgets, mean/std tables; a tiny run end to end."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from llm_lab.core.train.run import load_run_config
from llm_lab.experiments.ablation import QUICK_OVERRIDES, Arm, _summary_rows, default_arms, run_ablation
from llm_lab.experiments.tables import read_csv

from .test_time_to_loss import BASELINE, FAST


def test_arms_cover_every_option_and_drop_those_equal_to_the_base():
    base = load_run_config(BASELINE)  # AdamW, cosine, none of the model options
    names = [arm.name for arm in default_arms(base)]
    assert names[0] == "base"
    assert "optimizer=adamw" not in names and "schedule=cosine" not in names  # the base already is that
    assert {"optimizer=muon", "schedule=wsd", "schedule=linear", "zero_init_residual", "zero_init_head",
            "bigram_embedding", "value_embeddings"} <= set(names)  # fmt: skip
    fast = [a.name for a in default_arms(load_run_config(FAST))]  # Muon, linear decay, bigram embedding
    assert "optimizer=adamw" in fast and "schedule=cosine" in fast and "optimizer=muon" not in fast
    # An option the base has is switched off: the arm shows what it buys in the fast recipe.
    assert "bigram_embedding" not in fast and "bigram_embedding=false" in fast
    arms = {arm.name: arm for arm in default_arms(load_run_config(FAST))}
    assert arms["bigram_embedding=false"].overrides == ("model.bigram_embedding=false",)
    # Only over a Muon base, and only where the momentum is above the warm-up's start (0.85): the fast recipe's 0.6
    # would make the warm-up a no-op.
    assert "muon_momentum_warmup" not in names and "muon_momentum_warmup" not in fast
    usual = [a.name for a in default_arms(load_run_config(FAST).with_overrides(["train.muon_momentum=0.95"]))]
    assert "muon_momentum_warmup" in usual and not any(name.startswith("muon_momentum=") for name in usual)
    # The fast recipe's low Muon momentum against Muon's usual 0.95.
    assert arms["muon_momentum=0.95"].overrides == ("train.muon_momentum=0.95",)
    assert not any(name.startswith("muon_momentum=") for name in names)


def test_summary_by_hand():
    """base losses 2.0, 2.2 -> mean 2.1, std sqrt(0.02) = 0.1414; muon 1.9, 1.9 -> mean 1.9, std 0, delta -0.2."""
    runs = [
        {"arm": "base", "budget": "steps", "seed": 0, "steps": 10, "val_loss": 2.0, "s_per_step": 0.1},
        {"arm": "base", "budget": "steps", "seed": 1, "steps": 10, "val_loss": 2.2, "s_per_step": 0.3},
        {"arm": "muon", "budget": "steps", "seed": 0, "steps": 10, "val_loss": 1.9, "s_per_step": 0.4},
        {"arm": "muon", "budget": "steps", "seed": 1, "steps": 10, "val_loss": 1.9, "s_per_step": 0.4},
    ]
    base, muon = _summary_rows(runs)
    assert (base["val_loss_mean"], base["delta_vs_base"], base["s_per_step"]) == (pytest.approx(2.1), 0, 0.2)
    assert base["val_loss_std"] == pytest.approx(math.sqrt(0.02))
    assert (muon["val_loss_mean"], muon["val_loss_std"]) == (pytest.approx(1.9), 0)
    assert muon["delta_vs_base"] == pytest.approx(-0.2)


@pytest.mark.slow
def test_tiny_ablation_writes_both_budgets_with_mean_and_std(tmp_path, small_text):
    data = tmp_path / "corpus.txt"
    data.write_text(small_text, encoding="utf-8")
    base = load_run_config(FAST, QUICK_OVERRIDES)
    arms = [Arm("base", ()), Arm("optimizer=muon", ("train.optimizer=muon",))]
    runs, summary = run_ablation(
        base, data, tmp_path / "out", arms=arms, seeds=(0, 1), steps=3, time_budget_s=0.05, progress=False
    )
    assert [(r["arm"], r["budget"], r["seed"]) for r in runs] == [
        ("base", "steps", 0), ("base", "steps", 1), ("optimizer=muon", "steps", 0), ("optimizer=muon", "steps", 1),
        ("base", "time", 0), ("base", "time", 1), ("optimizer=muon", "time", 0), ("optimizer=muon", "time", 1),
    ]  # fmt: skip
    assert all(r["steps"] == 3 for r in runs if r["budget"] == "steps")
    # The time pass gives each arm the steps that fit its own measured speed.
    for row in (r for r in runs if r["budget"] == "time"):
        per_step = [r["s_per_step"] for r in runs if r["arm"] == row["arm"] and r["budget"] == "steps"]
        assert row["steps"] == max(1, int(0.05 / (sum(per_step) / 2)))
    by_key = {(s["arm"], s["budget"]): s for s in summary}
    losses = [r["val_loss"] for r in runs if r["arm"] == "optimizer=muon" and r["budget"] == "steps"]
    muon = by_key[("optimizer=muon", "steps")]
    assert muon["val_loss_mean"] == pytest.approx(sum(losses) / 2)
    assert muon["val_loss_std"] == pytest.approx(abs(losses[0] - losses[1]) / math.sqrt(2))
    assert muon["delta_vs_base"] == pytest.approx(muon["val_loss_mean"] - by_key[("base", "steps")]["val_loss_mean"])
    assert losses[0] != losses[1]  # the seeds differ
    assert len(read_csv(tmp_path / "out" / "summary.csv")) == 4 and len(read_csv(tmp_path / "out" / "runs.csv")) == 8
    assert (tmp_path / "out" / "summary.md").read_text().startswith("# Ablation: 2 arms x 2 seeds; step budget 3")


def _script_main():
    """``main`` of ``scripts/ablate_speedrun.py`` (the argument parsing lives in the script, not the library)."""
    path = Path(__file__).resolve().parents[2] / "scripts" / "ablate_speedrun.py"
    spec = importlib.util.spec_from_file_location("ablate_speedrun", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_script_errors_are_one_line(tmp_path, capsys, small_text):
    main = _script_main()
    data = tmp_path / "corpus.txt"
    data.write_text(small_text, encoding="utf-8")
    assert main(["--data", str(data), "--config", str(FAST), "--out", str(tmp_path / "o"), "--arms", "nope"]) == 2
    assert "error: unknown arm(s) ['nope']; choose from: base, " in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "missing.txt"), "--config", str(FAST), "--quick", "--seeds", "1"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.md").write_text("my notes")  # a folder of the user's is refused before any training
    assert main(["--data", str(data), "--config", str(FAST), "--quick", "--seeds", "1", "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert f"error: --out {mine} is not empty and is not an llm-lab result folder (no llm_lab_output.json; it holds " \
           "summary.md)" in err  # fmt: skip
    assert [p.name for p in mine.iterdir()] == ["summary.md"] and (mine / "summary.md").read_text() == "my notes"
