"""A sweep's runs scored on lm-evaluation-harness tasks (``llm-lab sweep --eval-tasks``).

After each run trains, :func:`harness_results` evaluates its final model with
:class:`~llm_lab.core.harness.LabLM` and returns every metric of every task as ``"task:metric"`` (``"tiny_mc:acc"``);
the sweep stores them with the run, and the report summarises each over seeds (mean +- standard deviation, 95%
interval) and tests it against the baseline (Welch's t-test), as it does the validation loss.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["check_eval_tasks", "harness_results"]


def check_eval_tasks(tasks: tuple[str, ...], include_path: str | None) -> None:
    """Fail before any training when the harness is missing or a task is unknown or unreadable."""
    try:
        from llm_lab.core.harness import task_manager
    except ModuleNotFoundError as error:
        raise ValueError(
            f"--eval-tasks needs EleutherAI's lm-evaluation-harness ({(error.name or 'lm_eval').split('.')[0]} is "
            'missing): pip install "foundry-llm[eval]"'
        ) from None
    task_manager(list(tasks), include_path)


def harness_results(
    tasks: tuple[str, ...], include_path: str | None, limit: int | None, trainer: Any, prepared: Any
) -> dict[str, Any]:
    """Every metric of ``tasks`` on the trained model, as ``{"task:metric": value}`` (standard errors left out)."""
    from llm_lab.core.harness import LabLM, evaluate_tasks
    from llm_lab.core.package.weights import unwrap_model

    lm = LabLM(unwrap_model(trainer.model), prepared.tokenizer)
    results = evaluate_tasks(lm, tasks, include_path=Path(include_path) if include_path else None, limit=limit)
    out: dict[str, Any] = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            name, _, _filter = key.partition(",")
            if "_stderr" in name or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if math.isfinite(value):
                out[f"{task}:{name}"] = float(value)
    return out
