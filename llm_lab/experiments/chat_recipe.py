"""The chat recipe (``configs/chat_arithmetic/``): base model, SFT, RL, each scored by a checker, side by side.

The steps, each a library call the CLI also makes:

1. **base**: ``llm-lab train --config base.json --data TEXT`` (tiny Shakespeare), a BPE model of prose;
2. **data**: the SFT conversations and the held-out task files, generated (``recipe.json`` says which tasks, how
   many, which seeds);
3. **SFT**: ``llm-lab train --config sft.json --data sft.jsonl --init-from base`` (``data.format: "chat"``);
4. **RL**: ``llm-lab rl --init-from sft --config rl.json`` once per seed of ``recipe.json``'s ``rl_seeds``;
5. **report**: pass@1 of the base, SFT and RL models on every held-out file (``score_task_file``: greedy replies,
   the task's checker), RL as mean +- sd over its seeds and its gain over SFT on the same questions (a gain
   counts when it is larger than both the seeds' sd and the questions' own standard error,
   ``sqrt(p * (1 - p) / n)``), with the CPU seconds each step took:
   ``OUT/report.csv`` and ``OUT/report.md``.

``quick`` shrinks every budget (steps, examples, prompts) to check the plumbing in seconds.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_lab.utils.json_input import load_json_file

__all__ = ["RECIPE_FILES", "ChatRecipeResult", "run_chat_recipe"]

RECIPE_FILES = ("recipe.json", "base.json", "sft.json", "rl.json")
QUICK_STEPS = 4
QUICK_EXAMPLES = 48


@dataclass
class ChatRecipeResult:
    """What the recipe measured: ``rows`` of the report (one per model) and the files written."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def _timed(step: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run ``step``; return its result, CPU seconds (this process) and wall seconds."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = step()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def _write_conversations(path: Path, parts: list[dict[str, Any]], quick: bool, shuffle_seed: int) -> int:
    """The SFT file: every part's generated examples as ``{"messages": ...}`` lines, shuffled together."""
    from llm_lab.core.chat.tasks import make_task, synth_examples
    from llm_lab.utils.io import atomic_write_text

    examples = []
    for part in parts:
        n = min(part["n"], QUICK_EXAMPLES) if quick else part["n"]
        examples += synth_examples(make_task(part["task"], **part.get("settings", {})), n, part["seed"])
    random.Random(shuffle_seed).shuffle(examples)
    atomic_write_text(path, "".join(json.dumps({"messages": ex.messages()}) + "\n" for ex in examples))
    return len(examples)


def _train(config_path: Path, data: Path, out: Path, quick: bool, init_from: Path | None = None) -> Any:
    from llm_lab.core.train.run import InitSource, prepare_run
    from llm_lab.core.train.run_config import load_run_config

    overrides = [f"train.max_steps={QUICK_STEPS}", f"train.eval_interval={QUICK_STEPS}", "train.warmup_steps=1",
                 "train.eval_batches=1"] if quick else []
    config = load_run_config(config_path, overrides)
    source = InitSource.load(init_from) if init_from is not None else None
    return prepare_run(config, data, out, init_from=source).start().train()


def run_chat_recipe(
    recipe_dir: str | Path, data: str | Path, out: str | Path, *, quick: bool = False
) -> ChatRecipeResult:
    """Run the recipe in ``recipe_dir`` (``recipe.json``, ``base.json``, ``sft.json``, ``rl.json``) on the text
    ``data``, writing everything under ``out`` (which must not exist or be empty).

    Raises:
        ValueError: a missing recipe file, a non-empty ``out``, or any step's own refusal.
    """
    from llm_lab.core.chat import ChatTemplate
    from llm_lab.core.chat.reply import score_task_file
    from llm_lab.core.chat.rl import GRPOTrainer, RLConfig
    from llm_lab.core.chat.tasks import make_task, write_task_file
    from llm_lab.core.package.io import load_package_or_run
    from llm_lab.experiments.stats import summarize
    from llm_lab.experiments.tables import markdown_table, write_csv
    from llm_lab.utils.config_loader import apply_overrides, load_json_config
    from llm_lab.utils.io import atomic_write_text

    recipe_dir, data, out = Path(recipe_dir), Path(data), Path(out)
    missing = [name for name in RECIPE_FILES if not (recipe_dir / name).is_file()]
    if missing:
        raise ValueError(f"{recipe_dir} is not a chat recipe: {', '.join(missing)} missing")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not empty; choose a new directory")
    recipe = load_json_file(recipe_dir / "recipe.json")
    out.mkdir(parents=True, exist_ok=True)
    result = ChatRecipeResult()

    # 1. base, 2. data, 3. SFT
    _, base_cpu, base_wall = _timed(lambda: _train(recipe_dir / "base.json", data, out / "base", quick))
    sft_data = out / "sft.jsonl"
    _write_conversations(sft_data, recipe["sft_data"], quick, recipe.get("shuffle_seed", 0))
    heldout = {}
    for part in recipe["heldout"]:
        n = min(part["n"], QUICK_EXAMPLES) if quick else part["n"]
        task = make_task(part["task"], **part.get("settings", {}))
        heldout[part["name"]] = write_task_file(task, n, part["seed"], out / f"heldout-{part['name']}.jsonl")
    _, sft_cpu, sft_wall = _timed(lambda: _train(recipe_dir / "sft.json", sft_data, out / "sft", quick,
                                                 init_from=out / "base"))

    def scores(model: Any, tokenizer: Any) -> dict[str, float]:
        return {f"pass@1 {name}": score_task_file(model, tokenizer, path).accuracy for name, path in heldout.items()}

    for name, path, cpu, wall in (("base", out / "base", base_cpu, base_wall), ("sft", out / "sft", sft_cpu,
                                                                               sft_wall)):
        _, tokenizer, model = load_package_or_run(path)
        result.rows.append({"model": name, **scores(model, tokenizer), "cpu_s": cpu, "wall_s": wall})

    # 4. RL, once per seed, from the SFT model
    rl_config = load_json_config(recipe_dir / "rl.json", RLConfig)
    if quick:
        rl_config = apply_overrides({"rl": rl_config}, [f"rl.max_steps={QUICK_STEPS}", "rl.eval_interval=2",
                                                        "rl.eval_prompts=8", "rl.prompts_per_step=2"])["rl"]
    rl_rows = []
    for seed in recipe["rl_seeds"]:
        _, tokenizer, model = load_package_or_run(out / "sft")
        seeded = apply_overrides({"rl": rl_config}, [f"rl.seed={seed}"])["rl"]
        trainer = GRPOTrainer(model, ChatTemplate(tokenizer), seeded, out / f"rl-seed{seed}")
        _, cpu, wall = _timed(trainer.train)
        rl_rows.append({"model": f"rl seed {seed}", **scores(trainer.model.eval(), tokenizer), "cpu_s": cpu,
                        "wall_s": wall})
    result.rows += rl_rows
    summary: dict[str, Any] = {"model": f"rl mean +- sd ({len(rl_rows)} seeds)"}
    gain: dict[str, Any] = {"model": "rl - sft (the gain; sd: the seeds')"}
    sft_row = next(row for row in result.rows if row["model"] == "sft")
    for column in rl_rows[0]:
        if column.startswith("pass@1"):
            s = summarize([row[column] for row in rl_rows])
            spread = f" +- {s.std:.3f}" if s.std is not None else ""
            summary[column] = f"{s.mean:.3f}{spread}"
            gain[column] = f"{s.mean - sft_row[column]:+.3f}{spread}"
    result.rows += [summary, gain]

    # 5. report
    columns = ["model", *[f"pass@1 {name}" for name in heldout], "cpu_s", "wall_s"]
    result.files["csv"] = write_csv(out / "report.csv", result.rows, columns)
    title = f"# Chat recipe ({recipe_dir.name}{', quick' if quick else ''})\n\n"
    atomic_write_text(out / "report.md", title + markdown_table(result.rows, columns) + "\n")
    result.files["markdown"] = out / "report.md"
    return result
