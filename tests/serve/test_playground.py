"""The playground's room for new tokens (llm_lab/serve/playground.py): ``POST /playground/room`` counts a prompt
as the completions route does, so the Max tokens slider never offers what the server would refuse."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from serve_helpers import make_package, serve_in_thread

from llm_lab.core.chat import ChatTemplate
from llm_lab.core.package.io import load_model_package
from llm_lab.serve import create_app
from llm_lab.serve.playground import DEFAULT_MAX_TOKENS


def room(server: Any, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}/playground/room", json=body, timeout=30)


def completion_status(server: Any, prompt: str, max_tokens: int) -> int:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    return httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=60).status_code


@pytest.mark.parametrize("prompt", ["t", "the quick ", "the quick brown fox " * 3, "e" * 63, "e" * 64])
def test_room_is_exactly_what_the_completions_route_accepts(server: Any, reference: Any, prompt: str) -> None:
    """Context 64: a prompt of P tokens leaves 64 - P + 1 new tokens (the last one is never fed back)."""
    n = len(reference.tokenizer.encode(prompt))
    fits = max(0, min(64, 64 - n + 1))
    answer = room(server, prompt=prompt)
    assert answer.status_code == 200
    assert answer.json() == {"prompt_tokens": n, "max_tokens": fits,
                             "default_max_tokens": min(DEFAULT_MAX_TOKENS, fits)}  # fmt: skip
    if fits > 0:
        assert completion_status(server, prompt, fits) == 200
    # One more is refused: over the context (400), or over the server's cap of 64 (422).
    assert completion_status(server, prompt, fits + 1) == (422 if fits == 64 else 400)


def test_a_prompt_over_the_context_has_no_room(server: Any) -> None:
    assert room(server, prompt="e" * 80).json() == {"prompt_tokens": 80, "max_tokens": 0, "default_max_tokens": 0}


def test_nothing_typed_yet_has_the_whole_allowance(server: Any) -> None:
    expected = {"prompt_tokens": 0, "max_tokens": 64, "default_max_tokens": DEFAULT_MAX_TOKENS}
    assert room(server, prompt="").json() == expected


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [({"prompt": "QQQ"}, 400, "prompt: .*character 'Q'"), ({}, 422, "prompt"), ({"prompt": 3}, 422, "prompt"),
     ({"prompt": "a", "extra": 1}, 422, "extra")],
)  # fmt: skip
def test_bad_bodies_name_the_field(server: Any, body: dict, status: int, message: str) -> None:
    import re

    answer = room(server, **body)
    assert answer.status_code == status
    assert re.search(message, answer.json()["error"]["message"]), answer.json()


# ---------------------------------------------------------------------------------------------------------------
# The Chat view's room: POST /playground/chat_room renders the conversation as /v1/chat/completions does.


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = make_package(tmp_path_factory.mktemp("chat") / "chat", chat=True)
    _, tokenizer, _ = load_model_package(path)
    with serve_in_thread(create_app(path)) as running:
        yield running, tokenizer


def chat_room(server: Any, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}/playground/chat_room", json=body, timeout=30)


@pytest.mark.parametrize("user", ["", "to be", "the quick brown fox " * 2])
def test_chat_room_is_what_the_chat_route_accepts(chat_server: Any, user: str) -> None:
    server, tokenizer = chat_server
    messages = [{"role": "system", "content": "be brief."}, {"role": "user", "content": user}]
    ids = ChatTemplate(tokenizer).prompt_ids(messages)
    fits = min(64, 64 - len(ids) + 1)
    answer = chat_room(server, messages=messages)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"prompt_tokens": len(ids), "max_tokens": fits,
                             "default_max_tokens": min(DEFAULT_MAX_TOKENS, fits),
                             "rendered": f"<|system|>be brief.<|end|><|user|>{user}<|end|><|assistant|>"}  # fmt: skip
    chat = {"messages": messages, "temperature": 0}
    assert httpx.post(f"{server.base_url}/v1/chat/completions", json={**chat, "max_tokens": fits}).status_code == 200
    assert httpx.post(f"{server.base_url}/v1/chat/completions", json={**chat, "max_tokens": fits + 1}).status_code \
        == (422 if fits == 64 else 400)


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        ({"messages": [{"role": "user", "content": "QQQ"}]}, 422, "messages", "character 'Q'"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 422, "messages", "unknown role 'robot'"),
        ({"messages": []}, 422, "messages", "empty conversation"),
        ({"messages": [{"role": "user", "content": "e" * 20_001}]}, 422, "messages", "more than 20000"),
        ({"messages": [], "prompt": "a"}, 422, "prompt", "prompt"),
    ],
)
def test_chat_room_bad_bodies_name_the_field(chat_server: Any, body: dict, status: int, param: str,
                                             message: str) -> None:
    answer = chat_room(chat_server[0], **body)
    assert answer.status_code == status
    assert answer.json()["error"]["param"] == param and message in answer.json()["error"]["message"], answer.json()


def test_chat_room_of_a_model_without_a_chat_template(server: Any) -> None:
    answer = chat_room(server, messages=[{"role": "user", "content": "the"}])
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "not_a_chat_model"
    assert "has no chat format" in answer.json()["error"]["message"]
