"""``POST /v1/chat/completions`` through the ``openai`` client: the reply equals ``generate`` on the rendered prompt
(greedy), streamed and not; logprobs in the chat form; bad conversations and non-chat models named."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
import torch
from serve_helpers import serve_in_thread

from llm_lab.core.chat import ChatTemplate, add_chat_tokens
from llm_lab.core.decode import generate
from llm_lab.core.model import MiniGPT, MiniGPTConfig
from llm_lab.core.tokenization import CharTokenizer
from llm_lab.serve import create_app
from llm_lab.serve.chat_api import chat_chunk, chat_response

ALPHABET = "0123456789 +?=Whatis.abcdefghijklmnopqrstuvwxyz\n"
CONVERSATION = [{"role": "system", "content": "add"}, {"role": "user", "content": "What is 2 + 3?"}]


def tiny(tokenizer: Any) -> MiniGPT:
    torch.manual_seed(0)
    config = MiniGPTConfig(vocab_size=tokenizer.vocab_size, context_length=48, n_layer=1, n_head=2, n_embd=16)
    return MiniGPT(config).eval()


@pytest.fixture(scope="module")
def chat_server():
    tokenizer = add_chat_tokens(CharTokenizer.from_text(ALPHABET))
    model = tiny(tokenizer)
    with serve_in_thread(create_app((model.config, tokenizer, model), model_name="chat")) as server:
        yield server, ChatTemplate(tokenizer), model


def reference(template: ChatTemplate, model: MiniGPT, max_tokens: int) -> tuple[str, str]:
    out = generate(model, template.prompt_ids(CONVERSATION), max_tokens, temperature=0.0,
                   eos_token_id=template.end_id, tokenizer=template.tokenizer)
    return out.texts[0], "stop" if out.finish_reasons[0] == "eos" else out.finish_reasons[0]


def test_the_openai_client_gets_the_libraries_greedy_reply(chat_server) -> None:
    server, template, model = chat_server
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none")
    text, reason = reference(template, model, 12)
    answer = client.chat.completions.create(model="chat", messages=CONVERSATION, max_tokens=12, temperature=0)
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == text
    assert answer.choices[0].finish_reason == reason
    stream = client.chat.completions.create(model="chat", messages=CONVERSATION, max_tokens=12, temperature=0,
                                            stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_logprobs_in_the_chat_form(chat_server) -> None:
    server, template, model = chat_server
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none")
    answer = client.chat.completions.create(model="chat", messages=CONVERSATION, max_tokens=4, temperature=0,
                                            logprobs=True, top_logprobs=2)
    content = answer.choices[0].logprobs.content
    assert "".join(t.token for t in content) == answer.choices[0].message.content
    assert all(len(t.top_logprobs) >= 2 and t.logprob <= 0 for t in content)


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages", "unknown role 'robot'"),
        ({"messages": []}, "messages", "empty conversation"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "messages",
         "the last message is the assistant's already"),
        ({"messages": CONVERSATION, "prompt": "x"}, "prompt", "not a chat completion field"),
        ({"messages": CONVERSATION, "top_logprobs": 3}, "top_logprobs", "with logprobs: true"),
        ({"messages": CONVERSATION, "temperature": 9}, "temperature", "temperature"),
    ],
)
def test_bad_requests_name_the_field(chat_server, body: dict, param: str, message: str) -> None:
    server, _, _ = chat_server
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"]


def test_a_conversation_longer_than_the_context_is_refused(chat_server) -> None:
    server, template, _ = chat_server
    messages = [{"role": "user", "content": "What is 2 + 3?" * 3}]  # 42 characters + 3 chat tokens: 45 of 48
    assert len(template.prompt_ids(messages)) == 45
    ok = httpx.post(f"{server.base_url}/v1/chat/completions", json={"messages": messages, "max_tokens": 1}, timeout=30)
    assert ok.status_code == 200
    messages[0]["content"] += "What"  # 49 tokens, over the context of 48
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json={"messages": messages}, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages" and error["code"] == "context_length_exceeded"
    assert error["message"] == ("messages: the conversation is 49 tokens long once rendered, more than this model's "
                                "context of 48 tokens; it is refused, not truncated: start a new conversation or "
                                "shorten it")


def test_a_model_without_chat_tokens_cannot_chat() -> None:
    tokenizer = CharTokenizer.from_text(ALPHABET)
    model = tiny(tokenizer)
    with serve_in_thread(create_app((model.config, tokenizer, model))) as server:
        response = httpx.post(f"{server.base_url}/v1/chat/completions", json={"messages": CONVERSATION}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages" and "has no chat format" in response.json()["error"][
        "message"]


def test_a_role_token_inside_a_reply_is_left_out_of_its_content() -> None:
    """As ``ChatTemplate.reply_text`` does for ``llm-lab chat``: the reply can go back into the conversation."""
    completion = {"id": "cmpl-1", "object": "text_completion", "choices": [
        {"index": 0, "text": "ab<|user|>c<|system|>", "finish_reason": "length", "logprobs": None}]}
    assert chat_response(completion)["choices"][0]["message"]["content"] == "abc"
    started: set[int] = set()
    chunks = [json.loads(chat_chunk(f"data: {json.dumps({'id': 'cmpl-1', 'choices': [choice]})}", started)[6:])
              for choice in ({"index": 0, "text": "ab"}, {"index": 0, "text": "<|user|>"}, {"index": 0, "text": "c"})]
    assert [c["choices"][0]["delta"] for c in chunks] == [{"role": "assistant", "content": "ab"}, {}, {"content": "c"}]
    tokenizer = add_chat_tokens(CharTokenizer.from_text(ALPHABET))
    template = ChatTemplate(tokenizer)
    ids = [*tokenizer.encode("ab"), template.role_ids["user"], *tokenizer.encode("c"), template.end_id]
    assert template.reply_text(ids) == "abc"
