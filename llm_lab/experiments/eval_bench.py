"""``llm-lab bench eval``: how fast :class:`~llm_lab.core.harness.LabLM` answers the harness, against its own ``hf``.

One package (GPT-2 or Llama family, so that ``export-hf`` can write it), one set of harness tasks, and the same
requests (the harness builds them once from the tasks) answered by:

- ``ours``: :class:`~llm_lab.core.harness.LabLM` in process, float32;
- ``hf bs=N``: the harness's ``hf`` backend on the exported directory, float32, at each batch size asked for
  (the best one is the reference: the harness at its best);
- ``server``: ``llm-lab serve`` on a local port with the harness's ``local-completions`` client (remote tokenizer,
  token-id requests), for requests per second.

Every route runs in each round, in an order that rotates from round to round, with the same torch threads; the
table gives the median seconds of a pass over all requests, requests per second and the speed-up of ``ours`` over
each. The answers are compared too (``max |diff|`` of the ``loglikelihood`` answers against ``ours``), so a fast
wrong route shows up; rolling totals are not compared, because the harness's API client cuts texts into windows one
token shorter than the other two routes do (it keeps a position for a generated token). Only the scoring request
types (``loglikelihood``, ``loglikelihood_rolling``) are timed; generation
goes through the decode loop, which ``llm-lab bench generate`` measures.
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llm_lab.experiments.tables import markdown_table

__all__ = ["EvalBenchSettings", "format_eval_bench", "run_eval_bench"]

SCORED_TYPES = ("loglikelihood", "loglikelihood_rolling")


@dataclass(frozen=True)
class EvalBenchSettings:
    """What ``llm-lab bench eval`` measures.

    Attributes:
        package: the package (GPT-2 or Llama family).
        tasks: harness task names.
        include_path: a folder of task YAML files (for local tasks).
        limit: at most this many documents per task.
        batch_size: ``ours``'s batch size.
        hf_batch_sizes: the ``hf`` backend's batch sizes to try.
        server_batch_size: prompts per request of the server route (0: skip the server).
        rounds: timed passes per route (median reported), after one untimed warm-up pass each.
    """

    package: Path
    tasks: tuple[str, ...]
    include_path: Path | None = None
    limit: int | None = None
    batch_size: int = 16
    hf_batch_sizes: tuple[int, ...] = (1, 8, 32)
    server_batch_size: int = 8
    rounds: int = 3

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks: give at least one harness task")
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        if self.batch_size < 1 or not self.hf_batch_sizes or min(self.hf_batch_sizes) < 1:
            raise ValueError("batch sizes must be positive integers")
        if self.server_batch_size < 0:
            raise ValueError(f"server_batch_size must be 0 (skip) or more, got {self.server_batch_size}")


def task_requests(tasks: tuple[str, ...], include_path: Path | None, limit: int | None) -> list[Any]:
    """The harness's own ``Instance`` requests for ``tasks`` (scoring types only), built as ``simple_evaluate`` does."""
    from lm_eval.tasks import get_task_dict

    from llm_lab.core.harness import task_manager

    requests = []
    for task in _leaf_tasks(get_task_dict(list(tasks), task_manager(tasks, include_path))):
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        requests.extend(r for r in task.instances if r.request_type in SCORED_TYPES)
    if not requests:
        raise ValueError(f"{', '.join(tasks)}: no loglikelihood or loglikelihood_rolling requests to time")
    return requests


def _leaf_tasks(task_dict: dict) -> Iterator[Any]:
    for value in task_dict.values():
        if isinstance(value, dict):
            yield from _leaf_tasks(value)
        else:
            yield value


def _answer(lm: Any, requests: list[Any]) -> list[float]:
    """Every request answered by ``lm``: the log-likelihoods in request order."""
    out: list[float] = []
    for kind in SCORED_TYPES:
        batch = [r for r in requests if r.request_type == kind]
        if not batch:
            continue
        answers = getattr(lm, kind)(batch, disable_tqdm=True)
        out.extend(a[0] if isinstance(a, tuple) else a for a in answers)
    return out


@contextlib.contextmanager
def _serving(package: Path) -> Iterator[str]:
    """``llm-lab serve PACKAGE`` on a free loopback port in a background thread; yields its base URL."""
    import uvicorn

    from llm_lab.serve import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(package, model_name="bench"), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the benchmark server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _hf_backends(hf_dir: Path, batch_sizes: tuple[int, ...]) -> dict[str, Any]:
    import transformers

    try:
        from lm_eval.models.huggingface import HFLM
    except ModuleNotFoundError as error:
        raise ValueError(
            f'bench eval compares with the harness\'s hf backend, which needs {error.name}: pip install "lm-eval[hf]"'
        ) from None
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    return {f"hf bs={b}": HFLM(pretrained=model, tokenizer=tokenizer, batch_size=b) for b in batch_sizes}


def run_eval_bench(settings: EvalBenchSettings) -> dict[str, Any]:
    """Time every route over the same requests (see the module docs); return the rows and the setting."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from llm_lab.core.harness import LabLM
    from llm_lab.core.package.hf_io import export_hf

    requests = task_requests(settings.tasks, settings.include_path, settings.limit)
    ours = LabLM.from_package(settings.package, batch_size=settings.batch_size)
    with tempfile.TemporaryDirectory(prefix="llm-lab-bench-eval-") as tmp, contextlib.ExitStack() as stack:
        routes: dict[str, Any] = {f"ours bs={settings.batch_size}": ours}
        routes.update(_hf_backends(export_hf(settings.package, Path(tmp) / "hf"), settings.hf_batch_sizes))
        if settings.server_batch_size:
            base_url = stack.enter_context(_serving(settings.package))
            routes[f"server bs={settings.server_batch_size}"] = LocalCompletionsAPI(
                base_url=f"{base_url}/v1/completions",
                model="bench",
                tokenizer_backend="remote",
                tokenized_requests=True,
                max_length=ours.max_length + 1,
                batch_size=settings.server_batch_size,
            )
        names = list(routes)
        answers = {name: _answer(lm, requests) for name, lm in routes.items()}  # warm-up, and the answers
        times: dict[str, list[float]] = {name: [] for name in names}
        for round_index in range(settings.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                _answer(routes[name], requests)
                times[name].append(time.perf_counter() - start)
    reference = answers[names[0]]
    ours_s = statistics.median(times[names[0]])
    n_single = sum(r.request_type == "loglikelihood" for r in requests)  # _answer puts these first
    rows = []
    for name in names:
        seconds = statistics.median(times[name])
        pairs = list(zip(answers[name], reference, strict=True))[:n_single]
        diff = max((abs(a - b) for a, b in pairs), default=0.0)
        rows.append(
            {
                "route": name,
                "seconds": seconds,
                "requests_per_s": len(requests) / seconds,
                "ours_speedup": seconds / ours_s,
                "max_abs_diff": diff,
            }
        )
    hf_rows = [row for row in rows if row["route"].startswith("hf")]
    best_hf = min(hf_rows, key=lambda row: row["seconds"])
    return {
        "rows": rows,
        "requests": len(requests),
        "threads": torch.get_num_threads(),
        "tasks": list(settings.tasks),
        "best_hf": best_hf["route"],
        "speedup_vs_best_hf": best_hf["seconds"] / ours_s,
    }


def format_eval_bench(result: dict[str, Any]) -> str:
    """The table, then one line: ours against the harness's hf backend at its best batch size."""
    table = markdown_table(
        result["rows"],
        ["route", "seconds", "requests_per_s", "ours_speedup", "max_abs_diff"],
        headers={"requests_per_s": "requests/s", "ours_speedup": "ours is x faster", "max_abs_diff": "max |diff|"},
    )
    return (
        f"{result['requests']} requests of {', '.join(result['tasks'])}, float32, {result['threads']} threads, "
        f"median of the rounds\n\n{table}\n"
        f"ours vs the harness's hf backend at its best ({result['best_hf']}): {result['speedup_vs_best_hf']:.2f}x"
    )
