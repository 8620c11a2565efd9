"""The single-worker runner: order, back-pressure (503), errors, and freeing the worker when a client leaves."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_helpers import serve_in_thread

from llm_lab.core.package.io import load_model_package
from llm_lab.serve import create_app
from llm_lab.serve.runner import ModelRunner, RunnerBusyError


def test_jobs_run_one_at_a_time_in_order() -> None:
    runner = ModelRunner(max_pending=8)
    running = 0
    most_at_once = 0
    order: list[int] = []
    lock = threading.Lock()

    def job(i: int) -> int:
        nonlocal running, most_at_once
        with lock:
            running += 1
            most_at_once = max(most_at_once, running)
        time.sleep(0.01)
        order.append(i)
        with lock:
            running -= 1
        return i * i

    async def main() -> list[int]:
        return await asyncio.gather(*(runner.run(job, i) for i in range(6)))

    try:
        assert asyncio.run(main()) == [0, 1, 4, 9, 16, 25]
    finally:
        runner.shutdown()
    assert most_at_once == 1
    assert order == list(range(6))


def test_full_queue_refuses_at_once_and_errors_reach_the_caller() -> None:
    runner = ModelRunner(max_pending=1)
    release = threading.Event()

    async def main() -> None:
        blocked = asyncio.ensure_future(runner.run(release.wait, 5))
        await asyncio.sleep(0.05)
        with pytest.raises(RunnerBusyError, match=r"busy \(1 requests queued, limit 1\)"):
            await runner.run(lambda: None)
        release.set()
        assert await blocked is True
        with pytest.raises(ZeroDivisionError):
            await runner.run(lambda: 1 / 0)
        assert runner.pending == 0

    try:
        asyncio.run(main())
    finally:
        runner.shutdown()
    with pytest.raises(ValueError, match="max_pending must be at least 1"):
        ModelRunner(max_pending=0)


def test_stream_consumer_leaving_cancels_the_job() -> None:
    runner = ModelRunner()
    saw_cancel = threading.Event()

    def endless(emit: Any, cancelled: threading.Event) -> None:
        for i in range(10_000):
            if cancelled.is_set():
                saw_cancel.set()
                return
            emit(i)
            time.sleep(0.001)

    async def main() -> list[int]:
        got = []
        items = runner.stream(endless)
        async for item in items:
            got.append(item)
            if len(got) == 3:
                break
        await items.aclose()
        return got

    try:
        assert asyncio.run(main()) == [0, 1, 2]
        assert saw_cancel.wait(5), "the worker kept generating for a client that left"
    finally:
        runner.shutdown()


@pytest.fixture
def slow_model(package_dir: Path) -> tuple[Any, Any, Any, list[int]]:
    """The package with a forward hook that sleeps, so a generation takes long enough to interrupt."""
    config, tokenizer, model = load_model_package(package_dir)
    calls: list[int] = []

    def slow(_module: Any, _args: Any) -> None:
        calls.append(1)
        time.sleep(0.02)

    model.register_forward_pre_hook(slow)
    return config, tokenizer, model, calls


def test_client_disconnect_frees_the_worker(slow_model: Any) -> None:
    config, tokenizer, model, calls = slow_model
    with serve_in_thread(create_app((config, tokenizer, model), model_name="slow")) as server:
        body = {"prompt": "the", "max_tokens": 60, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=30) as response:
            data: list[dict] = []
            for line in response.iter_lines():
                if line.startswith("data: "):
                    data.append(json.loads(line[6:]))
                if len(data) == 3:
                    break
        # The next request waits for the worker: it is answered only once the abandoned stream has stopped.
        follow_up = httpx.post(
            f"{server.base_url}/v1/completions", json={"prompt": "the", "max_tokens": 1, "temperature": 0}, timeout=30
        )
        assert follow_up.status_code == 200
    assert len(data) == 3
    # 60 forward passes if the abandoned stream had run to the end (+1 for the follow-up).
    assert len(calls) < 40, f"{len(calls)} forward passes: the worker kept generating for a client that left"


def test_a_failing_model_call_is_reported_and_the_worker_survives(package_dir: Path) -> None:
    config, tokenizer, model = load_model_package(package_dir)
    fail = {"on": True}

    def broken(_module: Any, _args: Any) -> None:
        if fail["on"]:
            raise RuntimeError("simulated device failure")

    model.register_forward_pre_hook(broken)
    with serve_in_thread(create_app((config, tokenizer, model), model_name="broken")) as server:
        url = f"{server.base_url}/v1/completions"
        plain = httpx.post(url, json={"prompt": "the", "max_tokens": 3}, timeout=30)
        assert plain.status_code == 500
        assert plain.json()["error"]["message"] == "generation failed: RuntimeError: simulated device failure"
        assert plain.json()["error"]["type"] == "server_error"

        streamed = httpx.post(url, json={"prompt": "the", "max_tokens": 3, "stream": True}, timeout=30)
        payloads = [line[6:] for line in streamed.text.split("\n") if line.startswith("data: ")]
        assert json.loads(payloads[0])["error"]["message"].endswith("simulated device failure")
        assert payloads[-1] == "[DONE]"

        fail["on"] = False
        assert httpx.post(url, json={"prompt": "the", "max_tokens": 3}, timeout=30).status_code == 200


def test_engine_settings_are_checked(package_dir: Path) -> None:
    loaded = load_model_package(package_dir)
    with pytest.raises(ValueError, match="device 'gpu' is not a device name; use cpu, cuda, cuda:N or mps"):
        create_app(loaded, device="gpu")
    with pytest.raises(ValueError, match=r"max_tokens_cap must be between 1 and the model's context \(64\), got 0"):
        create_app(loaded, max_tokens_cap=0)
    with pytest.raises(ValueError, match="max_body_bytes must be positive, got 0"):
        create_app(loaded, max_body_bytes=0)


def test_non_streaming_client_disconnect_stops_generation(slow_model: Any) -> None:
    """A plain (non-streaming) request whose client goes away stops generating and frees the worker.

    It used to run to the end (38 s measured) while the next request waited. 60 tokens at >= 20 ms each take over a
    second here; the client leaves after a few tokens, so far fewer than 60 forward passes run.
    """
    config, tokenizer, model, calls = slow_model
    with serve_in_thread(create_app((config, tokenizer, model), model_name="slow")) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        body = json.dumps({"prompt": "the", "max_tokens": 60, "temperature": 0}).encode()
        request = (
            f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        with socket.create_connection((host, int(port)), timeout=30) as client:
            client.sendall(request)
            deadline = time.monotonic() + 20
            while len(calls) < 3 and time.monotonic() < deadline:  # generation has started
                time.sleep(0.01)
            assert len(calls) >= 3, "the request never started generating"
        # The socket is closed. The next request is answered once the worker is free again.
        follow_up = httpx.post(
            f"{server.base_url}/v1/completions", json={"prompt": "the", "max_tokens": 1, "temperature": 0}, timeout=60
        )
        assert follow_up.status_code == 200
        passes_when_answered = len(calls)
        assert httpx.get(f"{server.base_url}/health").json()["pending"] == 0
    # 60 passes for the abandoned request had it run to the end, +1 for the follow-up.
    assert passes_when_answered < 40, f"{passes_when_answered} forward passes: the worker kept generating"
