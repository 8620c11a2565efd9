"""``llm-lab bench eval``: how fast :class:`~llm_lab.core.harness.LabLM` answers the harness, against its own ``hf``.

One package (GPT-2 or Llama family, so that ``export-hf`` can write it), one set of harness tasks, and the same
requests (the harness builds them once from the tasks) answered by the routes below. Without a package the benchmark
builds its own (:func:`build_generated_setup`, no download): a random 4 x 128 GPT-2-family model with a 2,048-id BPE
vocabulary trained on generated text and a 256-token context, and two local tasks cut from the same text, one
HellaSwag-shaped (100 questions, a 300-character context, four 80-character endings) and one wikitext-shaped (20
texts of 2,000 characters, scored whole).

- ``ours``: :class:`~llm_lab.core.harness.LabLM` in process, float32;
- ``hf bs=N``: the harness's ``hf`` backend on the exported directory, float32, at each batch size asked for
  (the best one is the reference: the harness at its best);
- ``server``: ``llm-lab serve`` in a subprocess on a local port (as a user runs it: the client and the server do
  not share one interpreter) with the harness's ``local-completions`` client (remote tokenizer, token-id requests),
  for requests per second.

Every route runs in each round, in an order that rotates from round to round, with the same torch threads; the table
gives the median seconds of a pass over all requests, requests per second and the speed-up of ``ours`` over each, in
all and for each request type apart: multiple-choice questions (``loglikelihood``), where ``ours`` runs a question's
context once and the output head only where a token is scored, and rolling windows (``loglikelihood_rolling``),
where every position is scored and both do the same work. The answers are compared too (``max |diff|`` of the
``loglikelihood`` answers against ``ours``), so a fast wrong route shows up; rolling totals are not compared,
because the harness's API client cuts texts into windows one token shorter than the other two routes do (it keeps a
position for a generated token). Only the scoring request types (``loglikelihood``, ``loglikelihood_rolling``) are
timed; generation goes through the decode loop, which ``llm-lab bench generate`` measures.
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llm_lab.experiments.serve_bench import serve_subprocess
from llm_lab.experiments.tables import markdown_table

__all__ = [
    "GENERATED_TASKS", "EvalBenchSettings", "build_generated_setup", "format_eval_bench", "run_eval_bench",
    "task_requests",
]

SCORED_TYPES = ("loglikelihood", "loglikelihood_rolling")


@dataclass(frozen=True)
class EvalBenchSettings:
    """What ``llm-lab bench eval`` measures.

    Attributes:
        package: the package (GPT-2 or Llama family), or None for the generated one (then no tasks of your own).
        tasks: harness task names (with ``package``).
        include_path: a folder of task YAML files (for local tasks).
        limit: at most this many documents per task.
        batch_size: ``ours``'s batch size.
        hf_batch_sizes: the ``hf`` backend's batch sizes to try.
        server_batch_size: prompts per request of the server route (0: skip the server).
        rounds: timed passes per route (median reported), after one untimed warm-up pass each.
    """

    package: Path | None = None
    tasks: tuple[str, ...] = ()
    include_path: Path | None = None
    limit: int | None = None
    batch_size: int = 16
    hf_batch_sizes: tuple[int, ...] = (1, 8, 32)
    server_batch_size: int = 8
    rounds: int = 3

    def __post_init__(self) -> None:
        if self.package is not None and not self.tasks:
            raise ValueError("--tasks: give at least one harness task to run on the package")
        if self.package is None and (self.tasks or self.include_path is not None):
            raise ValueError("--tasks and --include-path need a PACKAGE; without one the benchmark runs its own tasks "
                             "on its own generated model")
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        if self.batch_size < 1 or not self.hf_batch_sizes or min(self.hf_batch_sizes) < 1:
            raise ValueError("batch sizes must be positive integers")
        if self.server_batch_size < 0:
            raise ValueError(f"server_batch_size must be 0 (skip) or more, got {self.server_batch_size}")


def task_requests(tasks: tuple[str, ...], include_path: Path | None, limit: int | None) -> list[Any]:
    """The harness's own ``Instance`` requests for ``tasks`` (scoring types only), built as ``simple_evaluate`` does."""
    from llm_lab.core.harness import task_manager

    requests = []
    for task in _leaf_tasks(task_manager(tasks, include_path), list(tasks)):
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        requests.extend(r for r in task.instances if r.request_type in SCORED_TYPES)
    if not requests:
        raise ValueError(f"{', '.join(tasks)}: no loglikelihood or loglikelihood_rolling requests to time")
    return requests


def _leaf_tasks(manager: Any, names: list[str]) -> list[Any]:
    """Every task ``names`` stands for (groups opened): through ``TaskManager.load`` where the harness has it (it
    came after 0.4.9.2, this project's lowest), else the older ``get_task_dict`` tree."""
    if hasattr(manager, "load"):
        return list(manager.load(names)["tasks"].values())
    from lm_eval.tasks import get_task_dict

    def walk(tree: dict) -> Iterator[Any]:
        for value in tree.values():
            yield from walk(value) if isinstance(value, dict) else (value,)

    return list(walk(get_task_dict(names, manager)))


GENERATED_TASKS = ("bench_mc", "bench_ppl")


def build_generated_setup(work: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write the generated package and the two local tasks (see the module docs) under ``work``; return
    ``(package, task folder)``. Deterministic for a ``seed``."""
    from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
    from llm_lab.core.package.io import save_model_package
    from llm_lab.core.tokenization import SubwordTokenizer
    from llm_lab.experiments.data_bench import generate_text

    work.mkdir(parents=True, exist_ok=True)
    text = generate_text(work / "text.txt", 2_000_000, seed=seed).read_text(encoding="utf-8")
    tokenizer = SubwordTokenizer.train(text[:1_000_000], 2048, show_progress=False)
    config = MiniGPTConfig(vocab_size=tokenizer.vocab_size, context_length=256, n_layer=4, n_head=4, n_embd=128)
    torch.manual_seed(seed)
    package = save_model_package(work / "package", config, tokenizer, MiniGPT(config).eval(), step=0)
    rng, held_out = random.Random(seed), text[1_000_000:]  # tasks cut from text the tokenizer never saw

    def cut(n_chars: int) -> str:
        start = rng.randrange(len(held_out) - n_chars)
        return held_out[start : start + n_chars]

    questions = [{"ctx": cut(300), "choices": [cut(80) for _ in range(4)], "label": rng.randrange(4)}
                 for _ in range(100)]
    texts = [{"text": cut(2000)} for _ in range(20)]
    folder = work / "tasks"
    folder.mkdir(exist_ok=True)
    for name, docs, body in (
        ("bench_mc", questions, 'output_type: multiple_choice\ndoc_to_text: "{{ctx}}"\ndoc_to_choice: "{{choices}}"\n'
         "doc_to_target: label\nmetric_list:\n  - metric: acc\n"),
        ("bench_ppl", texts, 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
         "metric_list:\n  - metric: bits_per_byte\n    aggregation: bits_per_byte\n    higher_is_better: false\n"),
    ):
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(doc) + "\n" for doc in docs), encoding="utf-8")
        header = (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                  f"    test: {json.dumps(str(data))}\ntest_split: test\n")
        (folder / f"{name}.yaml").write_text(header + body, encoding="utf-8")
    return Path(package), folder


def _answer(lm: Any, requests: list[Any]) -> tuple[list[float], dict[str, float]]:
    """Every request answered by ``lm``: the log-likelihoods (``loglikelihood`` requests first, then rolling ones),
    and the seconds each request type took."""
    out: list[float] = []
    seconds: dict[str, float] = {}
    for kind in SCORED_TYPES:
        batch = [r for r in requests if r.request_type == kind]
        if not batch:
            continue
        start = time.perf_counter()
        answers = getattr(lm, kind)(batch, disable_tqdm=True)
        seconds[kind] = time.perf_counter() - start
        out.extend(a[0] if isinstance(a, tuple) else a for a in answers)
    return out, seconds


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

    with tempfile.TemporaryDirectory(prefix="llm-lab-bench-eval-") as tmp, contextlib.ExitStack() as stack:
        package, tasks, include_path = settings.package, settings.tasks, settings.include_path
        if package is None:
            package, include_path = build_generated_setup(Path(tmp) / "generated")
            tasks = GENERATED_TASKS
        requests = task_requests(tasks, include_path, settings.limit)
        ours = LabLM.from_package(package, batch_size=settings.batch_size)
        routes: dict[str, Any] = {f"ours bs={settings.batch_size}": ours}
        routes.update(_hf_backends(export_hf(package, Path(tmp) / "hf"), settings.hf_batch_sizes))
        if settings.server_batch_size:
            log = Path(tmp) / "serve.log"
            threads = ("--threads", str(torch.get_num_threads()))  # the same threads as the other routes
            base_url = stack.enter_context(serve_subprocess(package, log, extra=("--model-name", "bench", *threads)))
            routes[f"server bs={settings.server_batch_size}"] = LocalCompletionsAPI(
                base_url=f"{base_url}/v1/completions",
                model="bench",
                tokenizer_backend="remote",
                tokenized_requests=True,
                max_length=ours.max_length + 1,
                batch_size=settings.server_batch_size,
            )
        names = list(routes)
        answers = {name: _answer(lm, requests)[0] for name, lm in routes.items()}  # warm-up, and the answers
        times: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for round_index in range(settings.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(_answer(routes[name], requests)[1])
    kinds = [kind for kind in SCORED_TYPES if kind in times[names[0]][0]]
    counts = {kind: sum(r.request_type == kind for r in requests) for kind in kinds}

    def median_s(name: str, kind: str | None = None) -> float:
        return statistics.median(sum(t.values()) if kind is None else t[kind] for t in times[name])

    reference = answers[names[0]]
    n_single = counts.get("loglikelihood", 0)  # _answer puts these first
    rows = []
    for name in names:
        seconds = median_s(name)
        pairs = list(zip(answers[name], reference, strict=True))[:n_single]
        row = {
            "route": name,
            "seconds": seconds,
            "requests_per_s": len(requests) / seconds,
            "ours_speedup": seconds / median_s(names[0]),
            "max_abs_diff": max((abs(a - b) for a, b in pairs), default=0.0),
        }
        for kind in kinds:
            row[f"{kind}_s"] = median_s(name, kind)
            row[f"{kind}_speedup"] = median_s(name, kind) / median_s(names[0], kind)
        rows.append(row)
    hf_rows = [row for row in rows if row["route"].startswith("hf")]
    best_hf = min(hf_rows, key=lambda row: row["seconds"])
    by_kind = {}
    for kind in kinds:
        best = min(hf_rows, key=lambda row: row[f"{kind}_s"])
        by_kind[kind] = {"requests": counts[kind], "best_hf": best["route"], "speedup": best[f"{kind}_speedup"]}
    return {
        "rows": rows,
        "requests": len(requests),
        "threads": torch.get_num_threads(),
        "tasks": list(tasks),
        "package": "generated" if settings.package is None else str(settings.package),
        "best_hf": best_hf["route"],
        "speedup_vs_best_hf": best_hf["ours_speedup"],
        "by_type": by_kind,
    }


def format_eval_bench(result: dict[str, Any]) -> str:
    """The table, then one line: ours against the harness's hf backend at its best batch size."""
    kinds = list(result["by_type"])
    columns = ["route", "seconds", "requests_per_s", "ours_speedup"]
    headers = {"requests_per_s": "requests/s", "ours_speedup": "ours is x faster", "max_abs_diff": "max |diff|"}
    for kind in kinds:
        columns += [f"{kind}_s", f"{kind}_speedup"]
        headers |= {f"{kind}_s": f"{_LABELS[kind]} s", f"{kind}_speedup": f"{_LABELS[kind]}: ours is x faster"}
    table = markdown_table(result["rows"], [*columns, "max_abs_diff"], headers=headers)
    lines = [
        f"{result['requests']} requests of {', '.join(result['tasks'])}, float32, {result['threads']} threads, "
        f"median of the rounds",
        "",
        table,
        f"ours vs the harness's hf backend at its best ({result['best_hf']}): {result['speedup_vs_best_hf']:.2f}x",
    ]
    lines += [
        f"  {_LABELS[kind]} requests ({part['requests']}): {part['speedup']:.2f}x against {part['best_hf']}"
        for kind, part in result["by_type"].items()
    ]
    return "\n".join(lines)


_LABELS = {"loglikelihood": "loglikelihood", "loglikelihood_rolling": "rolling"}
