"""Continuous batching in the server (``llm_lab/serve/scheduler.py``), through real HTTP clients.

What batching must not change: every request gets, bit for bit, what it gets alone on the same server (greedy
text, seeded sampled text, log-probabilities, ``n`` choices, streamed or not). What it must do: let requests join a
running batch, free a slot as soon as its client leaves, and refuse work past the queue with 429.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_helpers import serve_in_thread

from llm_lab.core.decode.fast_linear import fbgemm_int8_available
from llm_lab.core.model.kv_cache import SlotKVCache
from llm_lab.core.package.io import load_model_package
from llm_lab.serve import create_app
from llm_lab.serve.scheduler import BatchLimits, BatchScheduler


@pytest.fixture
def slowed(package_dir: Path) -> tuple[tuple[Any, Any, Any], list[float]]:
    """The package with a forward hook that sleeps 10 ms, so requests overlap; the hook logs each pass's time."""
    config, tokenizer, model = load_model_package(package_dir)
    calls: list[float] = []

    def slow(_module: Any, _args: Any) -> None:
        calls.append(time.monotonic())
        time.sleep(0.01)

    model.register_forward_pre_hook(slow)
    return (config, tokenizer, model), calls


def _post(base_url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


async def _streamed(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """A streamed request reassembled into the shape of a plain answer's choices (text, reason, logprobs)."""
    choices: dict[int, dict[str, Any]] = {}
    async with client.stream("POST", url, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for chunk in json.loads(line[6:])["choices"]:
                choice = choices.setdefault(chunk["index"], {"text": "", "finish_reason": None, "logprobs": []})
                choice["text"] += chunk["text"]
                choice["finish_reason"] = chunk["finish_reason"] or choice["finish_reason"]
                if chunk["logprobs"] is not None:
                    choice["logprobs"] += chunk["logprobs"]["token_logprobs"]
    return {"choices": [choices[i] for i in sorted(choices)]}


def _summary(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["text"], c["finish_reason"]) for c in answer["choices"]]


def _logprobs(answer: dict[str, Any]) -> list[list[float]]:
    """Per choice, the new tokens' log-probabilities ([] without logprobs)."""
    rows = []
    for c in answer["choices"]:
        lp = c["logprobs"] or []
        rows.append(lp if isinstance(lp, list) else lp["token_logprobs"])
    return rows


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_batched_requests_get_what_they_get_alone(slowed: Any, dtype: str) -> None:
    """Six different requests, first one at a time, then all at once, one of them joining a batch mid-way.

    Mixed prompt lengths and max_tokens, a stop string, greedy and seeded sampling, n=2, logprobs, streamed and not:
    every answer is the same in the batch as alone (texts exactly; log-probabilities within 1e-5). In fp32 every
    decode step runs all 8 slots; in int8 (fbgemm: each row computed alone) only the slots up to the highest busy
    one, so a request alone decodes in 1 row and in the batch beside others.
    """
    if dtype == "int8" and not fbgemm_int8_available():
        pytest.skip("torch has no fbgemm on this CPU")
    loaded, _ = slowed
    with serve_in_thread(create_app(loaded, batch=BatchLimits(max_batch=8), decode_dtype=dtype)) as server:
        url = f"{server.base_url}/v1/completions"
        scheduler: BatchScheduler = server.server.config.app.state.scheduler  # type: ignore[attr-defined]
        assert scheduler.rows_independent == (dtype == "int8")
        step_rows: list[int] = []  # the rows of each decode step (a pass through the slot cache; prefill is not)

        def record(_module: Any, args: tuple, kwargs: dict) -> None:
            if isinstance(kwargs.get("past_key_values"), SlotKVCache):
                step_rows.append(args[0].shape[0])

        scheduler.model.register_forward_pre_hook(record, with_kwargs=True)
        free_text = _post(server.base_url, {"prompt": "to be", "max_tokens": 12, "temperature": 0})["choices"][0]
        stop = free_text["text"][5:7]  # a stop string that greedy decoding really reaches
        requests = [
            {"prompt": "the quick brown fox", "max_tokens": 44, "temperature": 0, "logprobs": 2},
            {"prompt": "a", "max_tokens": 9, "temperature": 0},
            {"prompt": "to be", "max_tokens": 12, "temperature": 0, "stop": [stop]},
            {"prompt": "a small model", "max_tokens": 15, "temperature": 0.9, "seed": 7, "n": 2},
            {"prompt": ["the lazy", "dog"], "max_tokens": 8, "temperature": 1.0, "top_k": 5, "seed": 3, "logprobs": 1},
            {"prompt": "question", "max_tokens": 20, "temperature": 0, "logprobs": 0},
        ]
        streamed = {0, 3}
        alone = []
        for index, body in enumerate(requests):
            if index in streamed:
                alone.append(asyncio.run(_in_client(lambda c, b=body: _streamed(c, url, b))))
            else:
                alone.append(_post(server.base_url, body))
        assert alone[2]["choices"][0]["finish_reason"] == "stop"
        assert alone[2]["choices"][0]["text"] == free_text["text"][: free_text["text"].index(stop)]
        assert scheduler.peak_busy <= 2  # one request at a time so far
        alone_rows, step_rows[:] = set(step_rows), []
        assert alone_rows == ({8} if dtype == "fp32" else {1, 2})  # n=2 and two prompts hold two slots

        async def together(client: httpx.AsyncClient) -> list[dict[str, Any]]:
            first = asyncio.ensure_future(_streamed(client, url, requests[0]))
            steps = scheduler.steps_done
            while scheduler.steps_done < steps + 5:  # the first request is decoding: the others join its batch
                await asyncio.sleep(0.005)
            rest = [
                _streamed(client, url, body) if index in streamed else _plain(client, url, body)
                for index, body in enumerate(requests[1:], start=1)
            ]
            return [await first, *await asyncio.gather(*rest)]

        batched = asyncio.run(_in_client(together))
        assert scheduler.peak_busy >= 5  # they really ran side by side
        assert max(step_rows) >= 5 if dtype == "int8" else set(step_rows) == {8}
    for one, other in zip(alone, batched, strict=True):
        assert _summary(other) == _summary(one)
        for got, want in zip(_logprobs(other), _logprobs(one), strict=True):
            assert len(got) == len(want) and got == pytest.approx(want, abs=1e-5)
    assert [len(row) for row in _logprobs(batched[0])] == [44]
    assert [len(row) for row in _logprobs(batched[4])] == [8, 8]


async def _plain(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(url, json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def _in_client(work: Any) -> Any:
    async with httpx.AsyncClient(timeout=60) as client:
        return await work(client)


def test_a_client_killed_mid_stream_frees_its_slot_within_a_step(slowed: Any) -> None:
    """One slot. A stream is abandoned after three chunks; the request waiting behind it starts within a step."""
    loaded, calls = slowed
    with serve_in_thread(create_app(loaded, batch=BatchLimits(max_batch=1))) as server:
        url = f"{server.base_url}/v1/completions"
        scheduler: BatchScheduler = server.server.config.app.state.scheduler  # type: ignore[attr-defined]
        waiting: dict[str, Any] = {}

        def follow_up() -> None:
            waiting["answer"] = _post(server.base_url, {"prompt": "a", "max_tokens": 2, "temperature": 0})

        body = {"prompt": "the", "max_tokens": 60, "temperature": 0, "stream": True}
        second = threading.Thread(target=follow_up)
        with httpx.stream("POST", url, json=body, timeout=30) as response:
            chunks = 0
            for line in response.iter_lines():
                chunks += line.startswith("data: ")
                if chunks == 3:
                    second.start()
                    while scheduler.waiting == 0:  # the follow-up is queued behind the stream
                        time.sleep(0.002)
                    passes_at_close = len(calls)
                    break  # closes the connection: the client is gone
        second.join(timeout=30)
    assert waiting["answer"]["choices"][0]["finish_reason"] == "length"
    # The follow-up is 2 passes (its prompt, one step); the abandoned stream would have run 57 more.
    assert len(calls) - passes_at_close <= 2 + 3, f"{len(calls) - passes_at_close} passes after the client left"


def test_past_the_queue_limit_requests_get_429_with_retry_after(slowed: Any) -> None:
    loaded, _ = slowed
    app = create_app(loaded, batch=BatchLimits(max_batch=1, max_queue=1))
    with serve_in_thread(app) as server:
        url = f"{server.base_url}/v1/completions"
        scheduler: BatchScheduler = server.server.config.app.state.scheduler  # type: ignore[attr-defined]

        async def main(client: httpx.AsyncClient) -> list[httpx.Response]:
            running = asyncio.ensure_future(client.post(url, json={"prompt": "the", "max_tokens": 40}))
            while scheduler.busy_slots == 0:
                await asyncio.sleep(0.005)
            queued = asyncio.ensure_future(client.post(url, json={"prompt": "a", "max_tokens": 3}))
            while scheduler.waiting == 0:
                await asyncio.sleep(0.005)
            refused = await client.post(url, json={"prompt": "a", "max_tokens": 3, "stream": True})
            health = (await client.get(f"{server.base_url}/health")).json()
            assert health["batch"] == {"slots": 1, "busy": 1, "waiting": 1}
            return [await running, await queued, refused]

        running, queued, refused = asyncio.run(_in_client(main))
    assert (running.status_code, queued.status_code, refused.status_code) == (200, 200, 429)
    assert int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert error["code"] == "server_busy"
    assert error["message"] == "the server is busy (1 requests waiting, limit 1); retry later"


def test_batch_size_follows_the_memory_estimate(package_dir: Path) -> None:
    """The tiny package: context 64, n_layer=2, n_kv_head=2, head_dim=16, fp32. One slot's KV cache is
    64 positions x 2 (keys, values) x 2 layers x 2 heads x 16 x 4 bytes = 32768 bytes."""
    loaded = load_model_package(package_dir)
    app = create_app(loaded, batch=BatchLimits(max_batch=8, memory_bytes=3 * 32768 + 100))
    assert app.state.scheduler.slots == 3
    app.state.scheduler.close()
    with pytest.raises(
        ValueError,
        match=r"one sequence of 64 positions needs 32768 bytes, more than the batch memory "
        r"limit of 32767 bytes; raise --batch-memory-mb",
    ):
        create_app(loaded, batch=BatchLimits(memory_bytes=32767))
    with pytest.raises(ValueError, match="max_queue must be a positive integer, got 0"):
        BatchLimits(max_queue=0)


def test_more_choices_than_slots_is_a_400_naming_n(package_dir: Path) -> None:
    loaded = load_model_package(package_dir)
    with serve_in_thread(create_app(loaded, batch=BatchLimits(max_batch=2))) as server:
        response = httpx.post(f"{server.base_url}/v1/completions", json={"prompt": "a", "n": 3}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"
    assert (
        "3 choices, more than the 2 sequences this server decodes at once (--max-batch)"
        in (response.json()["error"]["message"])
    )


def test_a_model_with_a_previous_token_embedding_is_served_one_request_at_a_time(tmp_path: Path) -> None:
    """The slot cache cannot hold such a model; its requests run alone, with the library's own decoding."""
    import torch

    from llm_lab.core.decode import generate
    from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
    from llm_lab.core.tokenization import CharTokenizer

    tokenizer = CharTokenizer.from_text("abcdefgh ")
    config = MiniGPTConfig(vocab_size=tokenizer.vocab_size, context_length=32, n_layer=1, n_head=2, n_embd=16,
                           bigram_embedding=True)  # fmt: skip
    torch.manual_seed(0)
    model = MiniGPT(config).eval()
    with torch.no_grad():
        model.prev_emb.weight.normal_(0.0, 1.0)  # a bigram table that matters
    app = create_app((config, tokenizer, model))
    assert (app.state.scheduler.slots, app.state.scheduler.max_choices) == (1, None)
    with serve_in_thread(app) as server:
        answer = _post(server.base_url, {"prompt": "abc", "max_tokens": 10, "temperature": 0, "n": 2})
    expected = generate(model, tokenizer.encode("abc"), 10, temperature=0, tokenizer=tokenizer).texts[0]
    assert [c["text"] for c in answer["choices"]] == [expected, expected]


def test_a_long_prompt_is_read_in_chunks_between_decode_steps(package_dir: Path) -> None:
    """With --prefill-chunk 4, a 30-token prompt joining a running stream is read in 8 forward passes of at most 4
    tokens, and never two of them without a decode step of the running request in between."""
    config, tokenizer, model = load_model_package(package_dir)
    shapes: list[tuple[int, int]] = []

    def log(_module: Any, args: Any) -> None:
        shapes.append(tuple(args[0].shape))
        time.sleep(0.005)

    model.register_forward_pre_hook(log)
    long_prompt = "the quick brown fox jumps over"  # 30 characters, 30 tokens
    assert len(tokenizer.encode(long_prompt)) == 30
    with serve_in_thread(create_app((config, tokenizer, model), batch=BatchLimits(prefill_chunk=4))) as server:
        scheduler: BatchScheduler = server.server.config.app.state.scheduler  # type: ignore[attr-defined]
        url = f"{server.base_url}/v1/completions"

        async def main(client: httpx.AsyncClient) -> None:
            running = asyncio.ensure_future(client.post(url, json={"prompt": "a", "max_tokens": 50}))
            while scheduler.steps_done < 3:
                await asyncio.sleep(0.002)
            joining = await client.post(url, json={"prompt": long_prompt, "max_tokens": 2})
            assert joining.status_code == 200 and (await running).status_code == 200

        asyncio.run(_in_client(main))
    steps = [shape == (8, 1) for shape in shapes]  # a decode step runs every slot; a prompt chunk is one row
    chunks = [shape for shape in shapes if shape[0] == 1]
    assert chunks[0] == (1, 1)  # the running request's one-token prompt
    assert chunks[1:] == [(1, 4)] * 7 + [(1, 2)]
    first, last = shapes.index((1, 4)), len(shapes) - 1 - shapes[::-1].index((1, 2))
    assert all(steps[i] or steps[i + 1] for i in range(first, last))  # no two chunks in a row


def test_a_prompt_that_fills_the_context_still_gets_its_one_token(package_dir: Path, reference: Any) -> None:
    """Context 64: a 64-token prompt leaves room for exactly one new token (it is never fed back)."""
    import torch

    from llm_lab.core.decode import generate

    prompt = ("the quick brown fox jumps over the lazy dog. " * 2)[:64]
    loaded = load_model_package(package_dir)
    with serve_in_thread(create_app(loaded)) as server:
        answer = _post(server.base_url, {"prompt": prompt, "max_tokens": 1, "temperature": 0})
        second = _post(server.base_url, {"prompt": "a", "max_tokens": 3, "temperature": 0})
    ids = reference.tokenizer.encode(prompt)
    expected = generate(reference.model, torch.tensor([ids]), 1, temperature=0, tokenizer=reference.tokenizer)
    assert answer["choices"][0] == {"text": expected.texts[0], "index": 0, "logprobs": None, "finish_reason": "length"}
    assert second["usage"]["completion_tokens"] == 3  # the server goes on


def test_openai_clients_in_parallel_get_what_they_get_alone(slowed: Any) -> None:
    """Four threads of the openai client, seeded sampling with n=2: the same choices side by side as one by one."""
    from concurrent.futures import ThreadPoolExecutor

    import openai

    loaded, _ = slowed
    with serve_in_thread(create_app(loaded, model_name="m")) as server:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="not-needed-locally", max_retries=0)
        scheduler: BatchScheduler = server.server.config.app.state.scheduler  # type: ignore[attr-defined]

        def ask(seed: int) -> list[str]:
            answer = client.completions.create(
                model="m", prompt="to be", max_tokens=12, n=2, seed=seed, temperature=0.8, extra_body={"top_p": 0.9}
            )
            return [choice.text for choice in answer.choices]

        alone = [ask(seed) for seed in range(4)]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(ask, range(4)))
        assert scheduler.peak_busy >= 4
    assert together == alone
    assert len({text for pair in alone for text in pair}) > 4  # the seeds really differ


def test_zero_new_tokens_finish_at_once_without_a_slot(package_dir: Path) -> None:
    """``max_tokens: 0`` (prompt scoring) ends every choice at once; the model is not called and no slot is taken."""
    from llm_lab.core.decode.sampling import SamplingConfig
    from llm_lab.serve.engine import CompletionEngine, SamplingSettings

    engine = CompletionEngine(*load_model_package(package_dir))
    scheduler = BatchScheduler(engine, BatchLimits(max_batch=2))
    events: list[tuple] = []
    try:
        settings = SamplingSettings(max_new_tokens=0, sampling=SamplingConfig(temperature=0))
        scheduler.submit([[1, 2], [3]], settings, engine.new_generator(0), events.append)
        assert events == [("finish", 0, "length", 0), ("finish", 1, "length", 0)]
        assert (scheduler.waiting, scheduler.busy_slots, scheduler.steps_done) == (0, 0, 0)
    finally:
        scheduler.close()
