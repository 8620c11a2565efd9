"""The chat recipe end to end at quick sizes: every step runs, the report has base, SFT and each RL seed."""

from __future__ import annotations

import pytest

from llm_lab.experiments.chat_recipe import run_chat_recipe
from llm_lab.experiments.tables import read_csv


@pytest.mark.slow
def test_the_quick_recipe_writes_the_side_by_side_report(tmp_path, small_text) -> None:
    from llm_lab.cli.experiment import REPO_ROOT

    text = tmp_path / "text.txt"
    text.write_text(small_text * 4)
    result = run_chat_recipe(REPO_ROOT / "configs" / "chat_arithmetic", text, tmp_path / "out", quick=True)
    rows = read_csv(result.files["csv"])
    assert [r["model"] for r in rows] == ["base", "sft", "rl seed 0", "rl seed 1", "rl seed 2",
                                         "rl mean +- sd (3 seeds)", "rl - sft (the gain; sd: the seeds')"]
    assert all(0.0 <= float(r["pass@1 3-digit"]) <= 1.0 for r in rows[:5])
    for column in ("pass@1 3-digit", "pass@1 4-digit"):
        seeds = [float(r[column]) for r in rows[2:5]]
        gain = sum(seeds) / 3 - float(rows[1][column])
        assert rows[6][column].startswith(f"{gain:+.3f} +- ")
    assert (tmp_path / "out" / "sft" / "run.json").is_file()
    assert (tmp_path / "out" / "rl-seed2" / "rl_state.pt").is_file()
    with pytest.raises(ValueError, match="exists and is not empty"):
        run_chat_recipe(REPO_ROOT / "configs" / "chat_arithmetic", text, tmp_path / "out", quick=True)
    with pytest.raises(ValueError, match=r"is not a chat recipe: recipe.json, base.json, sft.json, rl.json missing"):
        run_chat_recipe(tmp_path, text, tmp_path / "other", quick=True)


def test_the_recipe_files_are_valid() -> None:
    """rl.json is an RLConfig, recipe.json names real tasks with valid settings (the run configs are checked with
    every other example config)."""
    import json

    from llm_lab.cli.experiment import REPO_ROOT
    from llm_lab.core.chat.rl import RLConfig
    from llm_lab.core.chat.tasks import make_task
    from llm_lab.utils.config_loader import load_json_config

    recipe_dir = REPO_ROOT / "configs" / "chat_arithmetic"
    assert load_json_config(recipe_dir / "rl.json", RLConfig).task == "addition"
    recipe = json.loads((recipe_dir / "recipe.json").read_text())
    for part in [*recipe["sft_data"], *recipe["heldout"]]:
        make_task(part["task"], **part.get("settings", {}))
    assert len(recipe["rl_seeds"]) == 3
