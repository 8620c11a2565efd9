"""``POST /v1/inspect``: token scores, attention maps and the logit lens of one text, checked against the library
(``inspect_ids`` on an independent load of the package); its limits and bad input answer 4xx naming the field."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
import torch

import llm_lab.serve.inspect as inspect_module
from llm_lab.core.inspect import inspect_ids

TEXT = "to be, or not to be"


def inspect(server: Any, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/inspect", json=body, timeout=30)


def test_inspection_equals_the_library(server: Any, reference: Any) -> None:
    response = inspect(server, text=TEXT, top_logprobs=3)
    assert response.status_code == 200, response.text
    body = response.json()
    ids = reference.tokenizer.encode(TEXT)
    T = len(ids)
    want = inspect_ids(reference.model, ids, top_n=3, lens_top=3, tokenizer=reference.tokenizer)
    assert body["object"] == "inspection" and body["token_ids"] == ids
    assert body["tokens"] == list(TEXT) and body["text_offset"] == list(range(T))
    assert body["token_logprobs"][0] is None and body["top_logprobs"][0] is None
    assert body["token_logprobs"][1:] == [s.logprob for s in want.logprobs[1:]]
    assert [[a["token_id"] for a in top] for top in body["top_logprobs"][1:]] == [
        [i for i, _ in s.top] for s in want.logprobs[1:]
    ]
    attention = body["attention"]
    assert attention["layers"] == [0, 1] and attention["heads"] == [0, 1]
    for layer in range(2):
        for head in range(2):
            rows = attention["weights"][layer][head]
            assert [len(r) for r in rows] == list(range(1, T + 1))  # query t sees keys 0..t
            for t, row in enumerate(rows):
                exact = want.attentions[layer, head, t, : t + 1]
                assert torch.allclose(torch.tensor(row, dtype=torch.float32), exact, atol=5e-6, rtol=0)
                assert sum(row) == pytest.approx(1.0, abs=1e-4)
    lens = body["logit_lens"]
    assert lens["layers"] == ["embeddings", "layer 1", "layer 2"]
    assert [[cell[0]["token_id"] for cell in row] for row in lens["top"]] == want.lens_top_ids[..., 0].tolist()
    assert lens["next_token_logprobs"] == want.lens_next_logprobs.tolist()


def test_layers_and_heads_pick_what_comes_back(server: Any, reference: Any) -> None:
    body = inspect(server, text="the fox", layers=[1], heads=[0]).json()
    assert body["attention"]["layers"] == [1] and body["attention"]["heads"] == [0]
    assert len(body["attention"]["weights"]) == 1 and len(body["attention"]["weights"][0]) == 1
    none = inspect(server, text="the fox", layers=[]).json()
    assert none["attention"]["weights"] == [] and len(none["logit_lens"]["top"]) == 3


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        ({"text": ""}, 422, "text", r"text: must not be empty"),
        ({"text": "the " * 17}, 400, "text", r"text is 68 tokens long, more than this model's context of 64 tokens"),
        ({"text": "x" * 20_001}, 422, "text", r"text: String should have at most 20000 characters"),
        ({"text": "the", "layers": [2]}, 422, "layers", r"layers: layer 2 does not exist; this model has 2 layers"),
        ({"text": "the", "heads": [0, 5]}, 422, "heads", r"heads: head 5 does not exist; this model has 2 heads"),
        ({"text": "the", "layers": [-1]}, 422, "layers.0", r"layers.0: .*greater than or equal to 0"),
        ({"text": "QQQ"}, 400, "text", r"text: character 'Q'"),
        ({"text": "the", "top_logprobs": 6}, 422, "top_logprobs", r"less than or equal to 5"),
        ({"text": "the", "colour": "red"}, 422, "colour", r"unknown field 'colour'"),
        ({"text": "the", "model": "gpt-4"}, 404, "model", r"'gpt-4' is not served here"),
    ],
)
def test_bad_requests_name_the_field(server: Any, body: dict, status: int, param: str, message: str) -> None:
    response = inspect(server, **body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert re.search(message, error["message"]), error["message"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"text": "the", "text": "fox"}', "request body: duplicate key 'text'"),
        (b'{"text": "the", "top_logprobs": NaN}', "request body: NaN is not valid JSON"),
        (b"{not json", "request body: not valid JSON"),
    ],
)
def test_bodies_are_strict_json(server: Any, content: bytes, message: str) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/inspect", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(message)


def test_a_response_over_the_size_limit_is_refused_before_running(server: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(inspect_module, "MAX_ATTENTION_VALUES", 150)
    response = inspect(server, text="the quick brown")  # 2 layers x 2 heads x 15 * 16 / 2 = 480 weights
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "response_too_large" and error["param"] == "layers"
    assert "480 attention weights, over this server's limit of 150; ask for fewer layers or heads" in error["message"]
    assert inspect(server, text="the quick brown", layers=[0], heads=[1]).status_code == 200  # 120 weights


def test_a_body_not_sent_as_json_is_refused_like_completions(server: Any) -> None:
    """Both JSON endpoints read their body through one check: text/plain (which a foreign page can send without a
    preflight) is a 415 before anything runs."""
    response = httpx.post(
        f"{server.base_url}/v1/inspect", content=b'{"text": "the"}', headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415
    assert "Content-Type must be application/json (got 'text/plain')" in response.json()["error"]["message"]
