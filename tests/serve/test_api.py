"""The completions API over real HTTP: a uvicorn server on a loopback port, called with httpx.

Every answer is checked against ``llm_lab.core.decode.generate`` run on a second, independent load of the same
package, so "correct" means "exactly what the library gives", not merely "a 200".
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import torch

from llm_lab.core.decode import generate

MODEL_ID = "tiny-char"


def expected(reference: Any, prompts: list[str], max_tokens: int, *, n: int = 1, seed: int = 0, **kwargs: Any) -> Any:
    """What the server must answer: ``generate`` on the same rows (each prompt repeated ``n`` times)."""
    rows = [reference.tokenizer.encode(p) for p in prompts for _ in range(n)]
    generator = torch.Generator().manual_seed(seed)
    return generate(
        reference.model, rows, max_tokens, tokenizer=reference.tokenizer, generator=generator,
        eos_token_id=reference.tokenizer.eot_token_id, **kwargs,
    )  # fmt: skip


def sse_payloads(body: str) -> list[str]:
    """The ``data:`` payloads of a server-sent-events body, checking the framing on the way."""
    assert body.endswith("\n\n"), "every event ends with a blank line"
    events = body.split("\n\n")[:-1]
    assert all(event.startswith("data: ") for event in events), events[:3]
    return [event.removeprefix("data: ") for event in events]


def post(server: Any, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=30)


def test_health_models_and_playground(server: Any) -> None:
    health = httpx.get(f"{server.base_url}/health").json()
    assert health == {"status": "ok", "model": MODEL_ID, "pending": 0, "batch": {"slots": 8, "busy": 0, "waiting": 0}}
    models = httpx.get(f"{server.base_url}/v1/models").json()
    assert models["object"] == "list"
    (entry,) = models["data"]
    assert entry["id"] == MODEL_ID and entry["object"] == "model"
    assert entry["context_length"] == 64 and entry["max_tokens_cap"] == 64
    assert httpx.get(f"{server.base_url}/v1/models/{MODEL_ID}").json() == entry
    missing = httpx.get(f"{server.base_url}/v1/models/gpt-4")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"

    page = httpx.get(f"{server.base_url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="prompt"', 'id="temperature"', 'id="top-k"', 'id="top-p"', 'id="max-tokens"', 'id="seed"',
                    'id="generate"', 'id="stop"', 'src="/static/playground.js"'):  # fmt: skip
        assert element in page.text
    script = httpx.get(f"{server.base_url}/static/playground.js")
    assert script.status_code == 200 and "AbortController" in script.text


def test_greedy_completion_equals_generate(server: Any, reference: Any) -> None:
    response = post(server, model=MODEL_ID, prompt="the quick", max_tokens=25, temperature=0)
    assert response.status_code == 200
    body = response.json()
    want = expected(reference, ["the quick"], 25, temperature=0)
    assert body["object"] == "text_completion" and body["model"] == MODEL_ID and body["id"].startswith("cmpl-")
    assert isinstance(body["created"], int)
    assert body["choices"] == [{"text": want.texts[0], "index": 0, "logprobs": None, "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": 9, "completion_tokens": 25, "total_tokens": 34}
    assert len(want.texts[0]) == 25  # a character model: one character per token


def test_list_prompts_with_n_choices_equal_generate(server: Any, reference: Any) -> None:
    prompts = ["the fox", "to be, or"]
    body = post(server, prompt=prompts, n=3, max_tokens=12, temperature=0.9, top_k=10, seed=7).json()
    want = expected(reference, prompts, 12, n=3, seed=7, temperature=0.9, top_k=10)
    assert [c["index"] for c in body["choices"]] == list(range(6))
    assert [c["text"] for c in body["choices"]] == want.texts
    assert body["usage"]["prompt_tokens"] == len("the fox") + len("to be, or")
    assert body["usage"]["completion_tokens"] == 6 * 12
    # Three samples of one prompt at this temperature are not all the same text.
    assert len({c["text"] for c in body["choices"][:3]}) > 1


def test_seed_makes_sampling_reproducible(server: Any) -> None:
    settings = {"prompt": "a small", "max_tokens": 30, "temperature": 1.5, "top_p": 0.95}
    first = post(server, seed=123, **settings).json()["choices"][0]["text"]
    again = post(server, seed=123, **settings).json()["choices"][0]["text"]
    other = post(server, seed=124, **settings).json()["choices"][0]["text"]
    assert first == again
    assert first != other


def test_stop_string_cuts_the_text(server: Any, reference: Any) -> None:
    full = expected(reference, ["the lazy"], 40, temperature=0).texts[0]
    stop = full[10:12]  # a piece of the greedy text, so generation must stop at its first occurrence
    want = full[: full.index(stop)]
    body = post(server, prompt="the lazy", max_tokens=40, temperature=0, stop=[stop, "@@"]).json()
    assert body["choices"][0]["text"] == want
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == len(want) + len(stop)  # tokens up to the one completing it

    chunks = [json.loads(p) for p in sse_payloads(post(server, prompt="the lazy", max_tokens=40, temperature=0,
                                                      stop=stop, stream=True).text)[:-1]]  # fmt: skip
    streamed = "".join(c["choices"][0]["text"] for c in chunks)
    assert streamed == want  # the stop string never reaches a streaming client either
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_echo_prepends_the_prompt(server: Any, reference: Any) -> None:
    body = post(server, prompt="the fox", max_tokens=5, temperature=0, echo=True).json()
    assert body["choices"][0]["text"] == "the fox" + expected(reference, ["the fox"], 5, temperature=0).texts[0]


def test_streaming_sends_sse_chunks_ending_with_done(server: Any, reference: Any) -> None:
    settings = {"prompt": ["the quick", "a small"], "n": 2, "max_tokens": 15, "temperature": 1.0, "seed": 5}
    with httpx.stream(
        "POST", f"{server.base_url}/v1/completions", json={**settings, "stream": True,
        "stream_options": {"include_usage": True}}, timeout=30,
    ) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = "".join(response.iter_text())
    payloads = sse_payloads(body)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "text_completion" and c["model"] == MODEL_ID for c in chunks)
    assert len({c["id"] for c in chunks}) == 1

    texts, reasons = ["", "", "", ""], [None] * 4
    for chunk in chunks[:-1]:
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["text"]
        if choice["finish_reason"] is not None:
            assert reasons[choice["index"]] is None, "one finish chunk per choice"
            reasons[choice["index"]] = choice["finish_reason"]
    # Streamed text is exactly the non-streamed answer, and what generate gives.
    plain = post(server, **settings).json()
    assert texts == [c["text"] for c in plain["choices"]]
    assert texts == expected(reference, settings["prompt"], 15, n=2, seed=5, temperature=1.0).texts
    assert reasons == ["length"] * 4
    assert len(chunks) - 1 == 4 * 15 + 4  # one chunk per character-token, plus one finish chunk per choice
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == plain["usage"]


def test_twenty_concurrent_requests_all_answered_correctly(server: Any, reference: Any) -> None:
    """20 clients at once (half streaming): the single worker serialises them, and nobody gets a wrong answer."""
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "small", "model"]
    prompts = [f"{words[i % 10]} {words[(3 * i + 1) % 10]}" for i in range(20)]
    wants = {p: expected(reference, [p], 20, temperature=0).texts[0] for p in set(prompts)}

    def call(index: int) -> tuple[str, str]:
        prompt = prompts[index]
        body = {"prompt": prompt, "max_tokens": 20, "temperature": 0, "stream": index % 2 == 1}
        with httpx.Client(timeout=60) as client:
            response = client.post(f"{server.base_url}/v1/completions", json=body)
            assert response.status_code == 200, response.text
            if body["stream"]:
                chunks = [json.loads(p) for p in sse_payloads(response.text)[:-1]]
                return prompt, "".join(c["choices"][0]["text"] for c in chunks)
            return prompt, response.json()["choices"][0]["text"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(call, range(20)))
    assert len(answers) == 20
    for prompt, text in answers:
        assert text == wants[prompt], prompt
    assert httpx.get(f"{server.base_url}/health").json()["pending"] == 0


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        ({"prompt": "the", "temperature": 5}, 422, "temperature", r"temperature: .*less than or equal to 2"),
        ({"prompt": "the", "top_p": 0}, 422, "top_p", r"top_p: .*greater than 0"),
        ({"prompt": "the", "max_tokens": "ten"}, 422, "max_tokens", r"max_tokens: .*valid integer"),
        # One type rule: a number in a string is refused for every numeric field, floats included.
        ({"prompt": "the", "max_tokens": "5"}, 422, "max_tokens", r"max_tokens: Input should be a valid integer"),
        ({"prompt": "the", "temperature": "0.5"}, 422, "temperature", r"temperature: Input should be a valid number"),
        ({"prompt": "the", "top_p": "1"}, 422, "top_p", r"top_p: Input should be a valid number"),
        ({"prompt": "the", "min_p": True}, 422, "min_p", r"min_p: Input should be a valid number"),
        ({"prompt": "the", "repetition_penalty": "1.1"}, 422, "repetition_penalty", r"valid number"),
        ({"prompt": "the", "presence_penalty": "0"}, 422, "presence_penalty", r"valid number"),
        ({"prompt": "the", "repetition_penalty": 1e-300}, 422, "repetition_penalty", r"greater than or equal to 0.01"),
        ({"prompt": "the", "max_tokens": -1}, 422, "max_tokens", r"max_tokens: .*greater than or equal to 0"),
        ({"prompt": "the", "max_tokens": 65}, 422, "max_tokens", r"max_tokens: 65 is more than this server allows"),
        ({"prompt": "the", "n": 0}, 422, "n", r"n: "),
        ({"prompt": "the", "stop": ["a", "b", "c", "d", "e"]}, 422, "stop", r"stop: .*at most 4"),
        ({"prompt": "the", "stop": ""}, 422, "stop", r"stop strings must not be empty"),
        ({"prompt": "the", "stream": "yes"}, 422, "stream", r"stream: .*boolean"),
        ({"prompt": "the", "seed": 2**70}, 422, "seed", r"seed: .*less than or equal to 18446744073709551615"),
        ({"prompt": "the", "max_token": 5}, 422, "max_token", r"unknown field 'max_token'"),
        ({"prompt": "the", "logprobs": 6}, 422, "logprobs", r"logprobs: .*less than or equal to 5"),
        ({"prompt": ["the", 7]}, 422, "prompt", r"string or a list of strings"),
        ({"max_tokens": 3}, 422, "prompt", r"prompt is required"),
        ({"prompt": "the", "model": "gpt-4"}, 404, "model", r"'gpt-4' is not served here; this server serves"),
        ({"prompt": "QQQ"}, 400, "prompt", r"prompt: character 'Q'"),
        ({"prompt": ["the", ""]}, 400, "prompt.1", r"prompt.1: must not be empty"),
        ({"prompt": "the " * 20, "max_tokens": 5}, 400, "prompt", r"80 tokens long, more than this model's context"),
        ({"prompt": "the " * 10, "max_tokens": 30}, 400, "max_tokens", r"at most 25 new tokens fit \(asked for 30\)"),
    ],
)
def test_bad_requests_name_the_field(server: Any, body: dict, status: int, param: str, message: str) -> None:
    response = httpx.post(f"{server.base_url}/v1/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert re.search(message, error["message"]), error["message"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", r"^request body: not valid JSON \(Expecting property name"),
        (b"", r"^request body: not valid JSON"),
        (b"\xff\xfe", r"^request body: not UTF-8 text \(byte 0\)"),
        (b"[1, 2]", None),
        (b'"a prompt"', None),
        # Used to be a RecursionError (500); strict JSON refuses deep nesting and duplicate keys as invalid input.
        (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", r"^request body: JSON nested deeper than 64 levels"),
        (b"[" * 100_000, r"^request body: JSON nested deeper than 64 levels"),
        (b'{"prompt": "a", "max_tokens": 2, "max_tokens": 60}', r"^request body: duplicate key 'max_tokens'"),
        (b'{"prompt": "a", "temperature": NaN}', r"^request body: NaN is not valid JSON"),
    ],
)
def test_bad_json_is_400_or_422(server: Any, content: bytes, message: str | None) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/completions", content=content, headers={"content-type": "application/json"}
    )
    error = response.json()["error"]
    if message is None:  # valid JSON, but not an object
        assert response.status_code == 422 and error["message"].startswith("request body:")
    else:
        assert response.status_code == 400 and error["code"] == "invalid_json"
        assert re.search(message, error["message"]), error["message"]


def test_context_edge_is_exact(server: Any, reference: Any) -> None:
    """A 10-token prompt may ask for 64 - 10 + 1 = 55 tokens: the last new token is never fed back."""
    prompt = "the quick "
    body = post(server, prompt=prompt, max_tokens=55, temperature=0).json()
    assert body["choices"][0]["text"] == expected(reference, [prompt], 55, temperature=0).texts[0]
    assert post(server, prompt=prompt, max_tokens=56, temperature=0).status_code == 400


def test_body_over_the_limit_is_413(server: Any) -> None:
    big = {"prompt": "the " * 300_000, "max_tokens": 1}  # ~1.2 MB
    response = httpx.post(f"{server.base_url}/v1/completions", json=big)
    assert response.status_code == 413
    assert "larger than the server's limit of 1000000 bytes" in response.json()["error"]["message"]

    # Without a Content-Length (chunked upload) the body is counted as it arrives.
    def chunks():
        yield b'{"prompt": "'
        for _ in range(200):
            yield b"x" * 10_000
        yield b'"}'

    chunked = httpx.post(
        f"{server.base_url}/v1/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413
    # The server is still healthy afterwards.
    assert post(server, prompt="the", max_tokens=2, temperature=0).status_code == 200
