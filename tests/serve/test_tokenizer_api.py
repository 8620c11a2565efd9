"""The tokenizer routes and prompt scoring that make the server an lm-evaluation-harness backend.

The harness's own ``RemoteTokenizer`` is the client of the tokenizer routes; prompt scoring is checked against
:func:`~llm_lab.core.decode.logprobs.score_tokens` on a second load of the package, and its bad inputs get a 4xx
naming the field.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from package_helpers import bpe_tokenizer
from package_helpers import make_package as make_bpe_package
from serve_helpers import make_package as make_char_package
from serve_helpers import serve_in_thread

from llm_lab.core.chat import ChatTemplate
from llm_lab.core.decode.logprobs import score_tokens
from llm_lab.core.package.io import load_model_package
from llm_lab.serve import create_app

lm_eval_utils = pytest.importorskip("lm_eval.utils")


def post(server: Any, path: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=30)


@pytest.fixture(scope="module")
def bpe_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path, _ = make_bpe_package(tmp_path_factory.mktemp("bpe") / "pkg", bpe_tokenizer())
    with serve_in_thread(create_app(path)) as running:
        yield running


def test_the_harness_remote_tokenizer_reads_a_bpe_package(bpe_server: Any) -> None:
    remote = lm_eval_utils.RemoteTokenizer(f"{bpe_server.base_url}/v1/completions")
    tok = bpe_tokenizer()
    text = "to be, or not to be: that is the question."
    assert remote.encode(text) == tok.encode(text)
    assert remote.decode(tok.encode(text)) == text
    assert remote.eos_token == "<|endoftext|>" and remote.eos_token_id == tok.eot_token_id
    assert remote.bos_token is None and remote.tokenizer_info["chat_template"] is None
    assert remote.tokenizer_info["model_max_length"] == 32
    # Inside a text, the special token's text is ordinary text (no separator injected by user input).
    assert tok.eot_token_id not in remote.encode("a <|endoftext|> b")


def test_the_harness_remote_tokenizer_reads_a_char_package(server: Any, reference: Any) -> None:
    remote = lm_eval_utils.RemoteTokenizer(f"{server.base_url}/v1/completions")
    assert remote.encode("the lazy dog") == reference.tokenizer.encode("the lazy dog")
    assert remote.decode(reference.tokenizer.encode("a fox")) == "a fox"
    assert remote.eos_token is None and remote.eos_token_id is None
    assert lm_eval_utils.check_remote_tokenizer_support(f"{server.base_url}/v1/completions")


def test_the_harness_reads_the_chat_template_of_a_chat_package(tmp_path) -> None:
    """``chat_template`` is the text the package's tokenizer_config.json stores, and the harness's renderer of it
    writes the prompt the library renders from ids (special tokens shown as their text)."""
    path = make_char_package(tmp_path / "chat", chat=True)
    stored = json.loads((path / "tokenizer" / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]
    assert stored and "<|assistant|>" in stored
    _, tokenizer, _ = load_model_package(path)
    conversation = [{"role": "system", "content": "be brief."}, {"role": "user", "content": "to be, or not"},
                    {"role": "assistant", "content": "to be."}, {"role": "user", "content": "the fox"}]
    with serve_in_thread(create_app(path)) as running:
        remote = lm_eval_utils.RemoteTokenizer(f"{running.base_url}/v1/chat/completions")
        assert remote.tokenizer_info["chat_template"] == stored
        rendered = remote.apply_chat_template(conversation, add_generation_prompt=True)
    assert rendered == tokenizer.decode(ChatTemplate(tokenizer).prompt_ids(conversation))
    assert rendered.endswith("<|user|>the fox<|end|><|assistant|>")


def test_scoring_token_prompts_in_one_request(server: Any, reference: Any) -> None:
    """What the harness sends for log-likelihoods: token ids, echo, logprobs 1, max_tokens 1, temperature 0."""
    tok = reference.tokenizer
    prompts = [tok.encode(text) for text in ("the quick brown fox", "to be", "a small model learns the")]
    body = post(server, "/v1/completions", prompt=prompts, echo=True, logprobs=1, max_tokens=1, temperature=0).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    n_prompt = sum(map(len, prompts))
    assert body["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 3, "total_tokens": n_prompt + 3}
    for ids, choice in zip(prompts, body["choices"], strict=True):
        expected = score_tokens(reference.model, ids, top_n=1)[0]
        logprobs = choice["logprobs"]
        assert len(logprobs["token_logprobs"]) == len(ids) + 1  # the prompt, then the one generated token
        assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
        got = logprobs["token_logprobs"][1:-1]
        assert got == pytest.approx([e.logprob for e in expected[1:]], abs=1e-5)
        # The generated token is the greedy one: its logprob is the best of its top list, exactly.
        assert logprobs["token_logprobs"][-1] == max(logprobs["top_logprobs"][-1].values())
        assert choice["text"].startswith(tok.decode(ids)) and choice["finish_reason"] == "length"


def test_max_tokens_zero_scores_only_the_prompt(server: Any, reference: Any) -> None:
    ids = reference.tokenizer.encode("the lazy dog")
    choice = post(server, "/v1/completions", prompt=ids, echo=True, logprobs=0, max_tokens=0).json()["choices"][0]
    assert choice["text"] == "the lazy dog"
    assert len(choice["logprobs"]["tokens"]) == len(ids)
    expected = [e.logprob for e in score_tokens(reference.model, ids)[0][1:]]
    assert choice["logprobs"]["token_logprobs"][1:] == pytest.approx(expected, abs=1e-5)


def test_token_prompts_generate_like_the_same_text(server: Any, reference: Any) -> None:
    """The harness's generate_until with tokenized requests: token ids in, the same text as the text prompt."""
    ids = reference.tokenizer.encode("the quick")
    by_ids = post(server, "/v1/completions", prompt=[ids], max_tokens=8, temperature=0, stop=["."]).json()
    by_text = post(server, "/v1/completions", prompt="the quick", max_tokens=8, temperature=0, stop=["."]).json()
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "message"),
    [
        ("/v1/completions", {"prompt": [3, 999], "max_tokens": 1}, 422, "prompt.1", r"token id 999 is outside"),
        ("/v1/completions", {"prompt": [[3], [4, 999]], "max_tokens": 0}, 422, "prompt.1.1", r"outside the vocab"),
        ("/v1/completions", {"prompt": [3, -1], "max_tokens": 1}, 422, "prompt", r"token ids must be 0 or more"),
        ("/v1/completions", {"prompt": [[3], []], "max_tokens": 1}, 422, "prompt", r"each non-empty"),
        ("/v1/completions", {"prompt": [[3], "the"], "max_tokens": 1}, 422, "prompt", r"or a list of such lists"),
        ("/v1/completions", {"prompt": [3] * 65, "max_tokens": 0}, 400, "prompt", r"max_length=65 in --model_args"),
        ("/v1/completions", {"prompt": [3] * 65, "max_tokens": 1}, 400, "prompt", r"65 tokens long, more than"),
        ("/v1/completions", {"prompt": [3], "max_tokens": 0, "stream": True}, 422, "stream", r"cannot be streamed"),
        ("/tokenize", {"prompt": "QQQ"}, 400, "prompt", r"prompt: character 'Q'"),
        ("/tokenize", {"prompt": "the", "text": "x"}, 422, "text", r"unknown field 'text'"),
        ("/tokenize", {"prompt": "the", "model": "other"}, 404, "model", r"'other' is not served here"),
        ("/detokenize", {"tokens": [1, 5000]}, 422, "tokens.1", r"token id 5000 is outside the vocabulary"),
        ("/detokenize", {"tokens": "1 2"}, 422, "tokens", r"valid list"),
    ],
)
def test_bad_requests_name_the_field(server: Any, path: str, body: dict, status: int, param: str, message: str):
    response = httpx.post(f"{server.base_url}{path}", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert re.search(message, error["message"]), error["message"]
