"""``llm-lab bench serve``: how much more several clients get out of one ``llm-lab serve`` than one client does.

The benchmark saves a randomly initialised character model (6 layers of 384 by default) as a package, starts
``llm-lab serve`` on it in a subprocess (so the clients and the server do not share one Python interpreter), and
runs rounds of streamed, greedy completions of ``new_tokens`` tokens each, from 1 client and from ``clients``
clients at once (each client sends its requests one after another), alternating the scenarios in every round.
Reported per scenario, medians over the rounds: aggregate completion tokens per second (all clients together),
and the 50th and 95th percentile of the time to first token (request sent to first text chunk received). A second
server with ``--max-batch 1`` (one sequence at a time, as the server decoded before continuous batching) takes the
same loads as the baseline.

The numbers depend on the machine and on what else runs on it: the load average is printed beside them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from llm_lab.experiments.tables import markdown_table, write_csv

__all__ = [
    "ServeBenchSettings", "format_serve_table", "run_serve_benchmark", "serve_subprocess", "write_serve_results"
]

_TEXT = (
    "First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. First Citizen: You are all "
    "resolved rather to die than to famish? All: Resolved. resolved. First Citizen: First, you know Caius Marcius "
    "is chief enemy to the people.\n"
)


@dataclass
class ServeBenchSettings:
    """What to measure (defaults: the 6 x 384 model and 64-token completions of the batching issue).

    Attributes:
        n_layer, n_embd, n_head, context_length: the model (a character vocabulary of the built-in text).
        clients: the concurrent clients of the many-client scenario (one scenario always has 1 client).
        requests_per_client: completions each client asks for, one after another, per round.
        new_tokens: tokens per completion (``max_tokens``; no end token, so every completion is this long).
        prompt_chars: prompt length in characters (each request takes a different slice of the text).
        max_batch: ``--max-batch`` of the batching server.
        rounds: rounds of all scenarios, alternating (medians reported).
        dtype: ``--dtype`` of both servers (the weights they decode with: ``fp32``, ``bf16``, ``int8``, ``auto``).
    """

    n_layer: int = 6
    n_embd: int = 384
    n_head: int = 6
    context_length: int = 256
    clients: int = 8
    requests_per_client: int = 3
    new_tokens: int = 64
    prompt_chars: int = 24
    max_batch: int = 8
    rounds: int = 3
    seed: int = 0
    dtype: str = "fp32"

    def __post_init__(self) -> None:
        from llm_lab.core.decode.fast_linear import resolve_decode_dtype

        resolve_decode_dtype(self.dtype)  # an unknown name is a ValueError listing the choices
        for name, value in asdict(self).items():
            if name == "dtype":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.prompt_chars + self.new_tokens > self.context_length + 1:
            raise ValueError(
                f"a {self.prompt_chars}-character prompt and {self.new_tokens} new tokens do not fit a context of "
                f"{self.context_length}; lower them or raise context_length"
            )
        if self.prompt_chars > len(_TEXT) // 2:
            raise ValueError(f"prompt_chars must be at most {len(_TEXT) // 2}, got {self.prompt_chars}")

    @classmethod
    def quick(cls) -> ServeBenchSettings:
        """A tiny model and a few tokens: checks the whole path in seconds (not a measurement)."""
        return cls(n_layer=2, n_embd=32, n_head=2, context_length=64, clients=3, requests_per_client=1,
                   new_tokens=8, prompt_chars=8, max_batch=3, rounds=1)  # fmt: skip


def _save_package(settings: ServeBenchSettings, path: Path) -> Path:
    from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
    from llm_lab.core.package.io import save_model_package
    from llm_lab.core.tokenization import CharTokenizer

    tokenizer = CharTokenizer.from_text(_TEXT)
    config = MiniGPTConfig(
        vocab_size=tokenizer.vocab_size,
        context_length=settings.context_length,
        n_layer=settings.n_layer,
        n_head=settings.n_head,
        n_embd=settings.n_embd,
    )
    torch.manual_seed(settings.seed)
    return save_model_package(path, config, tokenizer, MiniGPT(config))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_subprocess(
    package: Path, log: Path, *, max_batch: int | None = None, dtype: str = "fp32", extra: tuple[str, ...] = ()
) -> Iterator[str]:
    """``llm-lab serve PACKAGE [--max-batch N] --dtype D [extra...]`` in a subprocess (clients and server then do
    not share one interpreter's lock, as with a real server; no ``max_batch``: the server's own default); yields its
    URL once ``/health`` answers, and stops it."""
    import httpx

    port = _free_port()
    batch = () if max_batch is None else ("--max-batch", str(max_batch))
    command = [sys.executable, "-m", "llm_lab", "serve", str(package), "--port", str(port), *batch,
               "--dtype", dtype, "--log-level", "warning", *extra]  # fmt: skip
    with open(log, "ab") as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"llm-lab serve exited with code {process.returncode}: {_last_line(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"llm-lab serve did not answer within 120 s: {_last_line(log)}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _last_line(log: Path) -> str:
    """The server log's last line (the log may live in a folder removed as the error propagates), and where it is."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return f"{lines[-1] if lines else 'nothing logged'} (log: {log})"


def _one_request(client: Any, url: str, prompt: str, new_tokens: int) -> tuple[float, int]:
    """Send one streamed greedy completion; return (seconds to the first text, completion tokens)."""
    body = {"prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    sent = time.perf_counter()
    first = None
    tokens = 0
    with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"the server answered {response.status_code}: {response.read()[:200]!r}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"the server failed: {chunk['error']['message']}")
            if first is None and any(c["text"] for c in chunk["choices"]):
                first = time.perf_counter() - sent
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return (first if first is not None else time.perf_counter() - sent), tokens


def _run_load(url: str, settings: ServeBenchSettings, clients: int, round_index: int) -> dict[str, Any]:
    """``clients`` threads, each sending ``requests_per_client`` requests in turn; aggregate tokens/s and TTFTs."""
    import httpx

    ttfts: list[float] = []
    tokens: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start_line = threading.Barrier(clients + 1)

    def client_work(index: int) -> None:
        with httpx.Client(timeout=600) as client:
            start_line.wait()
            for k in range(settings.requests_per_client):
                at = (7 * (index + clients * k + round_index)) % (len(_TEXT) - settings.prompt_chars)
                try:
                    ttft, count = _one_request(client, url, _TEXT[at : at + settings.prompt_chars], settings.new_tokens)
                except BaseException as error:  # reported after the threads are joined
                    with lock:
                        errors.append(error)
                    return
                with lock:
                    ttfts.append(ttft)
                    tokens.append(count)

    threads = [threading.Thread(target=client_work, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start_line.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]}")
    return {"tokens_per_second": sum(tokens) / elapsed, "ttfts": ttfts, "tokens": sum(tokens), "seconds": elapsed}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_serve_benchmark(
    settings: ServeBenchSettings, progress: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Run every scenario ``settings.rounds`` times, alternating; return one result row per scenario.

    Rows: ``server`` (its ``--max-batch``), ``clients``, ``tokens_per_s`` (median over rounds of the aggregate),
    ``ttft_p50_ms``/``ttft_p95_ms`` (over every request of every round), ``vs_1_client`` (tokens/s over the same
    server's 1-client row's), ``load`` (the 1-minute load average when the scenario last ran).
    """
    say = progress or (lambda _line: None)
    scenarios = [(settings.max_batch, 1), (settings.max_batch, settings.clients), (1, 1), (1, settings.clients)]
    results: dict[tuple[int, int], list[dict[str, Any]]] = {scenario: [] for scenario in scenarios}
    loads: dict[tuple[int, int], float | None] = {}
    with tempfile.TemporaryDirectory(prefix="llm-lab-bench-serve-") as tmp:
        package = _save_package(settings, Path(tmp) / "model")
        log = Path(tmp) / "server.log"
        with (
            serve_subprocess(package, log, max_batch=settings.max_batch, dtype=settings.dtype) as batching,
            serve_subprocess(package, log, max_batch=1, dtype=settings.dtype) as one_at_a_time,
        ):
            urls = {settings.max_batch: batching, 1: one_at_a_time}
            for url in urls.values():  # warm up both (first calls build the decode copy and allocate)
                _run_load(url, ServeBenchSettings(**{**asdict(settings), "requests_per_client": 1}), 1, 0)
            for round_index in range(settings.rounds):
                order = scenarios if round_index % 2 == 0 else scenarios[::-1]
                for max_batch, clients in order:
                    result = _run_load(urls[max_batch], settings, clients, round_index)
                    results[(max_batch, clients)].append(result)
                    loads[(max_batch, clients)] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
                    say(
                        f"round {round_index + 1}/{settings.rounds}: --max-batch {max_batch}, {clients} client(s): "
                        f"{result['tokens_per_second']:.1f} tokens/s"
                    )
    rows = []
    for max_batch, clients in scenarios:
        runs = results[(max_batch, clients)]
        speed = statistics.median(r["tokens_per_second"] for r in runs)
        base = statistics.median(r["tokens_per_second"] for r in results[(max_batch, 1)])
        ttfts = [t for r in runs for t in r["ttfts"]]
        rows.append(
            {
                "server": f"--max-batch {max_batch}",
                "clients": clients,
                "requests": len(ttfts),
                "tokens_per_s": round(speed, 1),
                "vs_1_client": round(speed / base, 2),
                "ttft_p50_ms": round(1000 * _percentile(ttfts, 0.5), 1),
                "ttft_p95_ms": round(1000 * _percentile(ttfts, 0.95), 1),
                "load": None if loads[(max_batch, clients)] is None else round(loads[(max_batch, clients)], 2),
            }
        )
    return rows


COLUMNS = ("server", "clients", "requests", "tokens_per_s", "vs_1_client", "ttft_p50_ms", "ttft_p95_ms", "load")
HEADERS = {"tokens_per_s": "tokens/s (all clients)", "vs_1_client": "x 1 client", "ttft_p50_ms": "TTFT p50 (ms)",
           "ttft_p95_ms": "TTFT p95 (ms)", "load": "load (1 min)"}  # fmt: skip


def format_serve_table(rows: list[dict[str, Any]]) -> str:
    """The result rows as a markdown table."""
    return markdown_table(rows, COLUMNS, HEADERS)


def write_serve_results(rows: list[dict[str, Any]], settings: ServeBenchSettings, out: Path) -> dict[str, Path]:
    """Write ``serve.csv``, ``serve.md`` (the table and the settings) under ``out``; return their paths."""
    from llm_lab.utils.io import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(out / "serve.csv", rows, COLUMNS)
    described = ", ".join(f"{key}={value}" for key, value in asdict(settings).items())
    md_path = out / "serve.md"
    atomic_write_text(md_path, f"# llm-lab bench serve\n\nSettings: {described}.\n\n{format_serve_table(rows)}")
    return {"csv": csv_path, "markdown": md_path}
