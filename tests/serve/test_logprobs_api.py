"""``logprobs: N`` in the completions API (plain, streamed, ``echo``), read with httpx and with the ``openai`` client.

Every number is checked against ``log_softmax`` of the model's logits, recomputed with a plain forward pass on a
second, independent load of the package.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import torch

from llm_lab.serve.logprobs import LogprobsBuilder

ATOL = 1e-5


def post(server: Any, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def raw_logprobs(reference: Any, ids: list[int]) -> torch.Tensor:
    """``(len(ids) - 1, V)``: row t is the model's raw next-token distribution after ``ids[: t + 1]``."""
    with torch.no_grad():
        logits, _ = reference.model(torch.tensor([ids]))
    return torch.log_softmax(logits[0, :-1].double(), dim=-1)


def check_choice(reference: Any, prompt: str, choice: dict[str, Any], n: int, echo: bool = False) -> None:
    """Tokens, offsets and every log-probability of one choice against a recomputation."""
    tok = reference.tokenizer
    lp = choice["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    text = choice["text"]
    assert "".join(lp["tokens"]) == text  # a character model: every token is whole text, no stop string here
    for token, offset in zip(lp["tokens"], lp["text_offset"], strict=True):
        assert text[offset : offset + len(token)] == token
    prompt_ids = tok.encode(prompt)
    ids = tok.encode(text) if echo else prompt_ids + tok.encode(text)
    expected = raw_logprobs(reference, ids)
    first = 0 if echo else len(prompt_ids)  # index in ids of the first reported token
    if echo:
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    for k, (token, value, top) in enumerate(zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True)):
        position = first + k
        if position == 0:
            continue
        row = expected[position - 1]
        assert abs(value - float(row[ids[position]])) <= ATOL
        best = row.topk(n)
        want = {tok.decode([int(i)]): float(v) for i, v in zip(best.indices, best.values, strict=True)}
        want.setdefault(token, float(row[ids[position]]))  # the chosen token is always there (up to N + 1 entries)
        assert top.keys() == want.keys()
        assert max(abs(top[key] - want[key]) for key in want) <= ATOL


def test_plain_logprobs_equal_the_models_raw_distribution(server: Any, reference: Any) -> None:
    # Sampled with a temperature and top-k: the reported numbers are still the raw distribution's.
    body = post(server, prompt=["the quick", "to be"], n=2, max_tokens=12, temperature=1.4, top_k=5, seed=2, logprobs=3)
    assert len(body["choices"]) == 4
    for choice in body["choices"]:
        prompt = ["the quick", "to be"][choice["index"] // 2]
        assert len(choice["logprobs"]["tokens"]) == 12
        check_choice(reference, prompt, choice, 3)
        assert choice["logprobs"]["text_offset"][0] == 0  # offsets index the choice's text
    without = post(server, prompt=["the quick", "to be"], n=2, max_tokens=12, temperature=1.4, top_k=5, seed=2)
    assert [c["text"] for c in without["choices"]] == [c["text"] for c in body["choices"]]
    assert all(c["logprobs"] is None for c in without["choices"])


def test_zero_alternatives_still_report_the_chosen_token(server: Any, reference: Any) -> None:
    choice = post(server, prompt="a small", max_tokens=6, temperature=0, logprobs=0)["choices"][0]
    assert all(len(top) == 1 for top in choice["logprobs"]["top_logprobs"])
    check_choice(reference, "a small", choice, 0)


def test_echo_scores_the_prompt_and_the_first_token_has_none(server: Any, reference: Any) -> None:
    choice = post(server, prompt="the lazy dog", max_tokens=5, temperature=0, echo=True, logprobs=2)["choices"][0]
    assert choice["text"].startswith("the lazy dog")
    assert len(choice["logprobs"]["tokens"]) == len("the lazy dog") + 5
    check_choice(reference, "the lazy dog", choice, 2, echo=True)


def streamed(server: Any, **body: Any) -> tuple[list[str], list[dict[str, list[Any]]]]:
    """Per choice: the streamed text and its logprobs pieces merged into one object."""
    with httpx.stream(
        "POST", f"{server.base_url}/v1/completions", json={**body, "stream": True}, timeout=30
    ) as response:
        assert response.status_code == 200
        payloads = [e.removeprefix("data: ") for e in "".join(response.iter_text()).split("\n\n") if e]
    assert payloads[-1] == "[DONE]"
    count = len(body["prompt"]) * body.get("n", 1) if isinstance(body["prompt"], list) else body.get("n", 1)
    texts = [""] * count
    merged: list[dict[str, list[Any]]] = [
        {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []} for _ in range(count)
    ]
    for payload in payloads[:-1]:
        for choice in json.loads(payload)["choices"]:
            texts[choice["index"]] += choice["text"]
            if choice["logprobs"] is not None:
                for key, values in choice["logprobs"].items():
                    merged[choice["index"]][key].extend(values)
    return texts, merged


@pytest.mark.parametrize("echo", [False, True], ids=["plain", "echo"])
def test_streamed_logprobs_equal_the_plain_answer(server: Any, reference: Any, echo: bool) -> None:
    settings = dict(prompt=["the quick", "a"], n=2, max_tokens=10, temperature=1.0, seed=9, logprobs=4, echo=echo)
    plain = post(server, **settings)["choices"]
    texts, merged = streamed(server, **settings)
    assert texts == [c["text"] for c in plain]
    assert merged == [c["logprobs"] for c in plain]


def test_openai_client_reads_the_logprobs(server: Any, reference: Any) -> None:
    openai = pytest.importorskip("openai", reason="the openai client is pinned in requirements-dev.txt")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    completion = client.completions.create(
        model="tiny-char", prompt="to be", max_tokens=6, temperature=0, logprobs=2, echo=True
    )
    choice = completion.choices[0]
    logprobs = choice.logprobs
    assert logprobs.tokens[:5] == list("to be") and logprobs.token_logprobs[0] is None
    assert logprobs.text_offset == list(range(len(choice.text)))
    assert all(isinstance(v, float) for v in logprobs.token_logprobs[1:])
    assert all(len(top) in (2, 3) for top in logprobs.top_logprobs[1:])
    check_choice(reference, "to be", choice.model_dump(), 2, echo=True)
    chunks = list(
        client.completions.create(
            model="tiny-char", prompt="to be", max_tokens=6, temperature=0, logprobs=2, stream=True
        )
    )
    streamed_tokens = [t for c in chunks for ch in c.choices if ch.logprobs for t in ch.logprobs.tokens]
    assert streamed_tokens == logprobs.tokens[5:]
    with pytest.raises(openai.UnprocessableEntityError, match="logprobs"):
        client.completions.create(model="tiny-char", prompt="to be", logprobs=9)


class _Bytes:
    """A stand-in tokenizer whose tokens are raw bytes, so a character can be split over two tokens."""

    def decode_bytes(self, ids: list[int]) -> bytes:
        return bytes(ids)


def test_a_token_inside_a_character_is_written_as_bytes_and_offsets_stay_on_characters() -> None:
    builder = LogprobsBuilder(_Bytes())
    ids = list("é!".encode())  # [0xc3, 0xa9, 0x21]: é is two tokens
    builder.add_all(ids, [None, None, None])
    assert builder.body["tokens"] == ["bytes:\\xc3", "bytes:\\xa9", "!"]
    assert builder.body["text_offset"] == [0, 0, 1]  # both halves start where "é" starts; "!" is character 1
