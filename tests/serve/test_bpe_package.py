"""Serving a byte-level BPE package: non-ASCII text, the end-of-text token, an empty prompt, streamed pieces."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from serve_helpers import serve_in_thread

from llm_lab.core.decode import generate
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.package.io import load_model_package, save_model_package
from llm_lab.core.tokenization import SubwordTokenizer
from llm_lab.serve import create_app

CORPUS = ["héllo wörld, ça va? naïve café", "the quick brown fox — déjà vu", "日本語のテキスト and emoji 🙂"] * 5
END_AFTER = 6  # the model below emits the end-of-text token as its 6th new token


@pytest.fixture(scope="module")
def bpe_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = SubwordTokenizer.train(CORPUS, vocab_size=300)
    config = MiniGPTConfig(vocab_size=tokenizer.vocab_size, context_length=48, n_layer=1, n_head=2, n_embd=32)
    torch.manual_seed(1)
    return save_model_package(tmp_path_factory.mktemp("serve-bpe") / "tiny-bpe", config, tokenizer, MiniGPT(config))


def end_after(model: Any, eot: int, n_new: int) -> None:
    """Make ``model`` emit ``eot`` as new token number ``n_new`` of every generation (a forward hook on the logits).

    Generation runs one forward pass for the prompt and one per new token after that, so pass ``n_new`` (counted
    from 1) is the one whose logits pick token ``n_new``.
    """
    passes = {"n": 0}

    def hook(_module: Any, args: Any, kwargs: Any, output: Any) -> Any:
        ids = args[0] if args else kwargs["input_ids"]
        cache = kwargs.get("past_key_values")
        # The prefill is the pass after which the cache holds exactly its input (decode uses a KV cache here).
        prefill = cache is None or cache.length == ids.shape[1]
        passes["n"] = 1 if prefill else passes["n"] + 1
        logits, past = output
        if passes["n"] == n_new:
            logits = logits.clone()
            logits[:, -1, eot] = 1e4
        return logits, past

    model.register_forward_hook(hook, with_kwargs=True)


@pytest.fixture(scope="module")
def bpe_server(bpe_package: Path) -> Iterator[tuple[str, Any]]:
    config, tokenizer, model = load_model_package(bpe_package)
    end_after(model, tokenizer.eot_token_id, END_AFTER)
    with serve_in_thread(create_app((config, tokenizer, model), model_name="tiny-bpe")) as server:
        yield server.base_url, load_model_package(bpe_package)


def test_end_of_text_token_stops_with_reason_stop(bpe_server: Any) -> None:
    base_url, (_, tokenizer, plain_model) = bpe_server
    prompt = "héllo wörld"
    body = httpx.post(
        f"{base_url}/v1/completions", json={"prompt": prompt, "max_tokens": 20, "temperature": 0}, timeout=30
    ).json()
    # Without the forced end token the model would go on; the first five tokens are the same either way.
    want = generate(plain_model, tokenizer.encode(prompt), END_AFTER - 1, temperature=0, tokenizer=tokenizer)
    assert body["choices"][0]["text"] == want.texts[0]
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == END_AFTER  # the end token was generated, so it counts
    assert body["usage"]["prompt_tokens"] == len(tokenizer.encode(prompt))


def test_empty_prompt_starts_from_end_of_text(bpe_server: Any) -> None:
    base_url, (_, tokenizer, plain_model) = bpe_server
    eot = tokenizer.eot_token_id
    texts = []
    for seed in range(4):
        request = {"prompt": "", "max_tokens": 4, "temperature": 1.0, "seed": seed}
        body = httpx.post(f"{base_url}/v1/completions", json=request, timeout=30).json()
        generator = torch.Generator().manual_seed(seed)
        want = generate(plain_model, [eot], 4, eos_token_id=eot, generator=generator, tokenizer=tokenizer)
        assert body["choices"][0]["text"] == want.texts[0]
        assert body["usage"]["prompt_tokens"] == 1
        texts.append(want.texts[0])
    assert any(texts), "every sample ended at once; the comparison above proved nothing"


def test_streamed_pieces_are_whole_characters(bpe_server: Any) -> None:
    """Byte-level tokens can split a character; streamed pieces must not (no U+FFFD, same text as unstreamed)."""
    base_url, _ = bpe_server
    request = {"prompt": "日本語", "max_tokens": 5, "temperature": 1.0, "seed": 11, "stream": True}
    texts = []
    for seed in range(11, 19):  # several seeds, so some sampled tokens are partial UTF-8 bytes
        request["seed"] = seed
        response = httpx.post(f"{base_url}/v1/completions", json=request, timeout=30)
        payloads = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
        assert payloads[-1] == "[DONE]"
        pieces = [json.loads(p)["choices"][0]["text"] for p in payloads[:-1]]
        plain = httpx.post(f"{base_url}/v1/completions", json={**request, "stream": False}, timeout=30).json()
        # Equal to decoding all the bytes at once: a piece that split a character would hold U+FFFD instead.
        assert "".join(pieces) == plain["choices"][0]["text"]
        texts.append(plain["choices"][0]["text"])
    assert any(ord(ch) > 127 for text in texts for ch in text), "no non-ASCII text was generated at all"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        (b'{"prompt": "a\\ud800b", "max_tokens": 3, "echo": true', "prompt", r"prompt: contains a lone surrogate "
         r"U\+D800 \(character 1\), which is not valid Unicode; send UTF-8 text"),
        (b'{"prompt": ["ok", "\\udfff"], "max_tokens": 3, "echo": true', "prompt.1", r"prompt.1: contains a lone "
         r"surrogate U\+DFFF \(character 0\)"),
        (b'{"prompt": "ok", "max_tokens": 3, "stop": "\\ud83d"', "stop", r"stop: contains a lone surrogate U\+D83D"),
    ],
)  # fmt: skip
def test_a_lone_surrogate_is_refused_streamed_or_not(bpe_server: Any, stream: bool, body: bytes, param: str,
                                                     message: str) -> None:  # fmt: skip
    """``echo`` with a lone surrogate was a 500 (UTF-8 cannot encode it) while the stream escaped it: both 422 now."""
    base_url, _ = bpe_server
    content = body + (b', "stream": true}' if stream else b"}")
    response = httpx.post(
        f"{base_url}/v1/completions", content=content, headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert re.match(message, error["message"]), error["message"]


def test_a_surrogate_pair_is_one_character_and_echoes(bpe_server: Any) -> None:
    base_url, _ = bpe_server
    content = b'{"prompt": "\\ud83d\\ude42 ok", "max_tokens": 2, "temperature": 0, "echo": true}'
    response = httpx.post(
        f"{base_url}/v1/completions", content=content, headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == 200 and response.json()["choices"][0]["text"].startswith("\U0001f642 ok")
