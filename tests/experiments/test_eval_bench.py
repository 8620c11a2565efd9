"""``llm-lab bench eval``: the routes answer the same requests alike, each request type is timed apart, and the
generated setup (no package given) is a real model with real harness tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from harness_tasks import MC_DOCS, TEXT_DOCS, write_tasks  # noqa: E402
from package_helpers import bpe_tokenizer, make_package  # noqa: E402

from llm_lab.cli import main as cli_main  # noqa: E402
from llm_lab.core.harness import task_manager  # noqa: E402
from llm_lab.experiments.eval_bench import (  # noqa: E402
    GENERATED_TASKS,
    EvalBenchSettings,
    _leaf_tasks,
    build_generated_setup,
    format_eval_bench,
    run_eval_bench,
    task_requests,
)


def test_settings_are_checked_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--tasks: give at least one harness task to run on the package"):
        EvalBenchSettings(package=tmp_path)
    with pytest.raises(ValueError, match="--tasks and --include-path need a PACKAGE"):
        EvalBenchSettings(tasks=("hellaswag",))
    with pytest.raises(ValueError, match="rounds must be at least 1, got 0"):
        EvalBenchSettings(rounds=0)


def test_tasks_without_a_package_is_a_one_line_cli_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["bench", "eval", "--tasks", "hellaswag"]) == 2
    assert capsys.readouterr().err.startswith("llm-lab: error: --tasks and --include-path need a PACKAGE")


def test_tasks_are_found_with_and_without_the_newer_task_manager_load(tmp_path: Path) -> None:
    """lm-eval 0.4.9.2 (the lowest this project allows) has no ``TaskManager.load``: the older tree is walked."""
    folder = write_tasks(tmp_path / "tasks")
    manager = task_manager(["tiny_mc", "tiny_ppl"], folder)

    class WithoutLoad:  # an older TaskManager
        def __getattr__(self, name: str):
            if name == "load":
                raise AttributeError(name)
            return getattr(manager, name)

    for found in (_leaf_tasks(manager, ["tiny_mc", "tiny_ppl"]), _leaf_tasks(WithoutLoad(), ["tiny_mc", "tiny_ppl"])):
        assert sorted(task.config.task for task in found) == ["tiny_mc", "tiny_ppl"]


@pytest.mark.slow
def test_every_route_answers_alike_and_each_request_type_is_timed_apart(tmp_path: Path) -> None:
    package, _ = make_package(tmp_path / "pkg", bpe_tokenizer())
    tasks = write_tasks(tmp_path / "tasks")
    settings = EvalBenchSettings(
        package=package, tasks=("tiny_mc", "tiny_ppl"), include_path=tasks, batch_size=2, hf_batch_sizes=(1, 4),
        server_batch_size=2, rounds=1,
    )  # fmt: skip
    result = run_eval_bench(settings)
    assert [row["route"] for row in result["rows"]] == ["ours bs=2", "hf bs=1", "hf bs=4", "server bs=2"]
    n_mc = sum(len(doc["choices"]) for doc in MC_DOCS)
    assert result["requests"] == n_mc + len(TEXT_DOCS)
    assert result["by_type"].keys() == {"loglikelihood", "loglikelihood_rolling"}
    assert result["by_type"]["loglikelihood"]["requests"] == n_mc
    assert result["by_type"]["loglikelihood_rolling"]["requests"] == len(TEXT_DOCS)
    for row in result["rows"]:
        assert row["max_abs_diff"] < 1e-4  # the same log-likelihoods, whoever answered
        # one round: the total is that round's sum (with more rounds each column is its own median)
        assert row["seconds"] == pytest.approx(row["loglikelihood_s"] + row["loglikelihood_rolling_s"])
        ours_s = result["rows"][0]["loglikelihood_s"]
        assert row["loglikelihood_speedup"] == pytest.approx(row["loglikelihood_s"] / ours_s)
    hf = [row for row in result["rows"] if row["route"].startswith("hf")]
    for kind, part in result["by_type"].items():
        best = min(hf, key=lambda row: row[f"{kind}_s"])
        assert part["best_hf"] == best["route"] and part["speedup"] == best[f"{kind}_speedup"]
    text = format_eval_bench(result)
    assert f"  loglikelihood requests ({n_mc}): {result['by_type']['loglikelihood']['speedup']:.2f}x against" in text
    assert f"  rolling requests ({len(TEXT_DOCS)}): " in text


@pytest.mark.slow
def test_the_generated_setup_is_a_package_and_harness_tasks_of_both_scored_types(tmp_path: Path) -> None:
    package, folder = build_generated_setup(tmp_path / "gen")
    config = json.loads((package / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["context_length"]) == (4, 128, 256)
    requests = task_requests(GENERATED_TASKS, folder, None)
    kinds = [r.request_type for r in requests]
    assert kinds.count("loglikelihood") == 400 and kinds.count("loglikelihood_rolling") == 20
    again, _ = build_generated_setup(tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (package / "model.safetensors").read_bytes()  # seeded
