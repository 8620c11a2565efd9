"""What one request may ask of the server: bounded work and memory, and a clean answer when the model is broken."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from llm_lab.core.decode import generate
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.package.io import load_model_package
from llm_lab.core.tokenization import CharTokenizer
from llm_lab.serve import create_app
from llm_lab.serve.app import RequestLimits
from llm_lab.serve.scheduler import BatchLimits

JSON = {"content-type": "application/json"}


def client_for(app: Any) -> TestClient:
    return TestClient(app, base_url="http://127.0.0.1:8000")


@pytest.fixture(scope="module")
def loaded(package_dir: Path) -> tuple[Any, Any, Any]:
    return load_model_package(package_dir)


def test_total_new_tokens_of_a_request_are_bounded(loaded: Any) -> None:
    app = create_app(loaded, limits=RequestLimits(max_tokens=100), batch=BatchLimits(max_batch=10))
    with client_for(app) as client:
        ok = client.post("/v1/completions", json={"prompt": ["the", "a"], "n": 5, "max_tokens": 10})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 100  # exactly the limit
        over = client.post("/v1/completions", json={"prompt": ["the", "a"], "n": 5, "max_tokens": 11})
        assert over.status_code == 400
        assert over.json()["error"] == {
            "message": "max_tokens: 2 prompt(s) x n=5 x max_tokens=11 = 110 new tokens, more than this server "
            "allows in one request (100, --max-request-tokens); ask for fewer prompts, choices or tokens",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "request_limit_exceeded",
        }


def test_memory_of_a_request_is_bounded(loaded: Any) -> None:
    """The tiny package: n_layer=2, n_kv_head=2, head_dim=16, fp32, a vocabulary of 31 characters.

    KV cache per position: 2 (keys, values) x 2 layers x 2 heads x 16 x 4 bytes = 512 bytes. Scores: 31 x 4 bytes
    x 4 copies = 496 bytes per row. Prompt "the" (3 tokens) with n=4 and max_tokens=10: 4 rows x 12 positions x
    512 + 4 x 496 = 24576 + 1984 = 26560 bytes.
    """
    config, tokenizer, _ = loaded
    assert (config.n_layer, config.n_kv_head, config.head_dim, tokenizer.vocab_size) == (2, 2, 16, 31)
    body = {"prompt": "the", "n": 4, "max_tokens": 10}
    with client_for(create_app(loaded, limits=RequestLimits(max_memory_bytes=26_560))) as client:
        assert client.post("/v1/completions", json=body).status_code == 200
    with client_for(create_app(loaded, limits=RequestLimits(max_memory_bytes=26_559))) as client:
        over = client.post("/v1/completions", json=body)
    assert over.status_code == 400 and over.json()["error"]["param"] == "max_tokens"
    assert over.json()["error"]["message"].startswith(
        "max_tokens: 1 prompt(s) x n=4 x max_tokens=10 needs about 26560 bytes for the KV cache and scores, more "
        "than this server allows in one request (26559 bytes, --max-request-memory-mb)"
    )


def test_the_issues_request_is_refused_before_any_work() -> None:
    """32 prompts x n=16 x 1000 tokens (RSS 0.3 to 4.5 GB before) is refused by the default limits at once."""
    tokenizer = CharTokenizer.from_text("abcdefgh ")
    config = MiniGPTConfig(vocab_size=tokenizer.vocab_size, context_length=1024, n_layer=1, n_head=1, n_embd=8)
    model = MiniGPT(config)
    calls: list[int] = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    with client_for(create_app((config, tokenizer, model))) as client:
        response = client.post("/v1/completions", json={"prompt": ["abc"] * 32, "n": 16, "max_tokens": 1000})
    assert response.status_code == 400
    assert "32 prompt(s) x n=16 x max_tokens=1000 = 512000 new tokens, more than this server allows in one " \
        "request (32768, --max-request-tokens)" in response.json()["error"]["message"]  # fmt: skip
    assert calls == []


@pytest.mark.parametrize(
    ("limits", "match"),
    [({"max_tokens": 0}, "max_request_tokens must be positive"),
     ({"max_memory_bytes": 0}, "max_request_memory must be positive")],
)  # fmt: skip
def test_limits_are_checked(limits: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RequestLimits(**limits)


def test_a_tiny_temperature_is_greedy_over_http(loaded: Any) -> None:
    """``temperature: 1e-300`` used to be a 500 ("probability tensor contains inf/nan")."""
    _, tokenizer, model = loaded
    with client_for(create_app(loaded)) as client:
        body = client.post("/v1/completions", json={"prompt": "the", "max_tokens": 12, "temperature": 1e-300}).json()
    want = generate(model, tokenizer.encode("the"), 12, temperature=0, tokenizer=tokenizer)
    assert body["choices"][0]["text"] == want.texts[0]


def test_a_model_with_nan_weights_is_a_clean_error(package_dir: Path) -> None:
    config, tokenizer, model = load_model_package(package_dir)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    message = (
        "the model produced non-finite logits (NaN or inf) for row 0: its weights or its inputs are broken (a "
        "package with NaN weights, an fp16 overflow); check the package"
    )
    with client_for(create_app((config, tokenizer, model))) as client:
        plain = client.post("/v1/completions", json={"prompt": "the", "max_tokens": 3})
        assert plain.status_code == 500
        assert plain.json()["error"] == {
            "message": message, "type": "server_error", "param": None, "code": "non_finite_scores"
        }  # fmt: skip
        streamed = client.post("/v1/completions", json={"prompt": "the", "max_tokens": 3, "stream": True})
    payloads = [line[6:] for line in streamed.text.split("\n") if line.startswith("data: ")]
    assert json.loads(payloads[0])["error"]["message"] == message
    assert payloads[-1] == "[DONE]"
