"""The playground's Inspect view in headless Chromium (Debian's package, driven by Playwright, as in
``test_playground_browser.py``): tokens coloured by probability, alternatives on hover and on keyboard focus, the
attention of a chosen token for a picked layer and head, the logit lens; a character and a BPE model, a full context.

Every number the page shows is checked against ``llm_lab.core.inspect.inspect_ids`` on the same model. Screenshots
go to ``$LLM_LAB_TEST_ARTIFACTS`` (``make browser-test``: ``test-artifacts/``) or the test's ``tmp_path``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from serve_helpers import serve_in_thread
from test_playground_browser import artifact_dir, browser_context, chromium  # noqa: F401  (shared fixtures)

from llm_lab.core.inspect import inspect_ids
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.package.io import load_model_package
from llm_lab.core.tokenization import SubwordTokenizer
from llm_lab.serve import create_app

CORPUS = ["héllo wörld, ça va? naïve café", "the quick brown fox jumps over the lazy dog", "déjà vu 🙂"] * 5


@pytest.fixture(scope="module")
def char_server(package_dir: Path) -> Iterator[tuple[str, Any]]:
    config, tokenizer, model = load_model_package(package_dir)
    with serve_in_thread(create_app((config, tokenizer, model), model_name="tiny-char")) as server:
        yield server.base_url, (tokenizer, model)


@pytest.fixture(scope="module")
def bpe_server() -> Iterator[tuple[str, Any]]:
    tokenizer = SubwordTokenizer.train(CORPUS, vocab_size=300)
    config = MiniGPTConfig(vocab_size=tokenizer.vocab_size, context_length=48, n_layer=2, n_head=3, n_embd=48)
    torch.manual_seed(3)
    model = MiniGPT(config).eval()
    with serve_in_thread(create_app((config, tokenizer, model), model_name="tiny-bpe")) as server:
        yield server.base_url, (tokenizer, model)


def open_page(context: Any, base_url: str, model_name: str) -> tuple[Any, list[str]]:
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(base_url)
    page.wait_for_function(f"document.getElementById('model-name').textContent === '{model_name}'")
    return page, errors


def click_inspect(page: Any) -> None:
    page.evaluate("delete document.body.dataset.inspect")
    page.click("#inspect")
    page.wait_for_function("['ready', 'error'].includes(document.body.dataset.inspect)", timeout=30_000)
    assert page.evaluate("document.body.dataset.inspect") == "ready", page.inner_text("#error")


def shown(text: str) -> str:
    return text.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


def attention_weights(page: Any) -> list[float]:
    return page.eval_on_selector_all(
        "#attention-tokens .tok", "spans => spans.filter(s => s.dataset.weight).map(s => Number(s.dataset.weight))"
    )


def test_inspect_view_on_a_character_model(browser_context: Any, char_server: Any, artifact_dir: Path) -> None:  # noqa: F811
    base_url, (tokenizer, model) = char_server
    page, errors = open_page(browser_context, base_url, "tiny-char")
    page.fill("#prompt", "the quick")
    page.eval_on_selector("#temperature", "el => { el.value = '0'; el.dispatchEvent(new Event('input')); }")
    page.eval_on_selector("#max-tokens", "el => { el.value = '20'; el.dispatchEvent(new Event('input')); }")
    page.click("#generate")
    page.wait_for_function("document.body.dataset.state === 'idle' && document.getElementById('stats').textContent")
    text = page.text_content("#output-prompt") + page.text_content("#output-text")
    click_inspect(page)

    ids = tokenizer.encode(text)
    want = inspect_ids(model, ids, top_n=5, lens_top=3, tokenizer=tokenizer)
    spans = page.query_selector_all("#inspect-tokens .tok")
    assert len(spans) == len(ids) == 29
    assert "unscored" in spans[0].get_attribute("class")
    probs = [float(s.get_attribute("data-prob")) for s in spans[1:]]
    assert probs == pytest.approx([math.exp(s.logprob) for s in want.logprobs[1:]], abs=2e-6)
    colours = {s.evaluate("el => getComputedStyle(el).backgroundColor") for s in spans[1:]}
    assert len(colours) >= 5, "tokens are coloured by their probability"
    generated = [i for i, s in enumerate(spans) if "generated" in s.get_attribute("class")]
    assert generated == list(range(9, 29))  # the prompt is "the quick": 9 characters

    # Hover: the top alternatives at that position, most likely first, with their probabilities.
    spans[6].hover()
    page.wait_for_selector("#token-tooltip:not([hidden])")
    rows = page.eval_on_selector_all("#token-tooltip tr", "rows => rows.map(r => r.innerText.split('\\t'))")
    top = want.logprobs[6].top
    assert [r[0].strip() for r in rows] == [shown(want.id_text[i]) for i, _ in top]
    assert [r[-1].strip() for r in rows] == [f"{100 * math.exp(lp):.1f}%" for _, lp in top]
    assert f"p = {math.exp(want.logprobs[6].logprob):.4f}" in page.inner_text("#token-tooltip .head")
    page.screenshot(path=str(artifact_dir / "inspect-char-hover.png"), full_page=True)
    page.mouse.move(0, 0)

    # Keyboard: focus the first token, move with the arrow keys (the tooltip follows), Enter chooses the token.
    page.focus("#inspect-tokens .tok[data-index='0']")
    page.wait_for_selector("#token-tooltip:not([hidden])")
    assert "the first token" in page.inner_text("#token-tooltip")
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.dataset.index") == "4"
    assert page.inner_text("#token-tooltip .head").startswith(f"“{shown(text[4])}”")
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('attention-query').textContent.includes('token 5')")
    assert attention_weights(page) == pytest.approx(want.attentions[0, 0, 4, :5].tolist(), abs=1e-5)
    assert page.get_attribute("#attention-map", "data-drawn") == "29"

    # The layer/head pickers fetch and show another head's pattern for the same token.
    page.select_option("#inspect-layer", "1")
    page.select_option("#inspect-head", "1")
    expected_row = want.attentions[1, 1, 4, :5].tolist()
    page.wait_for_function(
        "want => { const w = [...document.querySelectorAll('#attention-tokens .tok')].filter(s => s.dataset.weight)"
        ".map(s => Number(s.dataset.weight)); return Math.abs(w[0] - want) < 1e-5; }",
        arg=expected_row[0],
    )
    assert attention_weights(page) == pytest.approx(expected_row, abs=1e-5)

    # The logit lens at the chosen token: the output row on top, the embeddings at the bottom.
    lens = page.eval_on_selector_all(
        "#logit-lens tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.innerText))"
    )
    assert [r[0] for r in lens] == ["layer 2", "layer 1", "embeddings"]
    for row, layer in zip(lens, [2, 1, 0], strict=True):
        best = int(want.lens_top_ids[layer, 4, 0])
        assert row[1].startswith(shown(want.id_text[best]) + " ")
        assert row[2] == f"{100 * math.exp(float(want.lens_next_logprobs[layer, 4])):.1f}%"
    page.evaluate("document.activeElement.blur()")  # the tooltip goes with the focus
    assert page.is_hidden("#token-tooltip")
    page.screenshot(path=str(artifact_dir / "inspect-char.png"), full_page=True)
    assert not errors
    page.close()


def test_inspect_view_on_a_bpe_model_with_a_full_context(
    browser_context: Any,  # noqa: F811
    bpe_server: Any,
    artifact_dir: Path,  # noqa: F811
) -> None:
    base_url, (tokenizer, model) = bpe_server
    page, errors = open_page(browser_context, base_url, "tiny-bpe")
    text = " ".join(CORPUS)
    ids = tokenizer.encode(text)
    while len(ids) > 48:  # the longest prefix of whole words that fills the context
        text = text.rsplit(" ", 1)[0]
        ids = tokenizer.encode(text)
    page.fill("#prompt", text)
    click_inspect(page)
    want = inspect_ids(model, ids, top_n=5, lens_top=3, tokenizer=tokenizer)
    spans = page.query_selector_all("#inspect-tokens .tok")
    assert len(spans) == len(ids) >= 40
    assert "".join(s.text_content() for s in spans) == text  # split characters belong to their last piece
    partial = [i for i, s in enumerate(spans) if "partial" in s.get_attribute("class")]
    assert partial and all("\ufffd" in want.tokens[i] for i in partial)  # é, ç, ï, à as two byte-level tokens
    probs = [float(s.get_attribute("data-prob")) for s in spans[1:]]
    assert probs == pytest.approx([math.exp(s.logprob) for s in want.logprobs[1:]], abs=2e-6)
    assert page.get_attribute("#attention-map", "data-drawn") == str(len(ids))  # the last token, chosen at first
    assert attention_weights(page) == pytest.approx(want.attentions[0, 0, -1].tolist(), abs=1e-5)
    assert page.eval_on_selector_all("#inspect-head option", "o => o.length") == 3
    spans[partial[0]].hover()
    page.wait_for_selector("#token-tooltip:not([hidden])")
    assert len(page.query_selector_all("#token-tooltip tr")) == 5
    raw = tokenizer.decode_bytes([ids[partial[0]]])
    assert page.inner_text("#token-tooltip .head").startswith("“bytes:" + "".join(f"\\x{b:02x}" for b in raw))
    page.screenshot(path=str(artifact_dir / "inspect-bpe-full-context.png"), full_page=True)
    assert not errors

    # A text longer than the context: the server's message, naming the problem (the browser logs the 400).
    page.mouse.move(0, 0)
    page.fill("#prompt", text + " and more words than fit")
    page.click("#inspect")
    page.wait_for_function("document.body.dataset.inspect === 'error'")
    assert "more than this model's context of 48 tokens" in page.inner_text("#error")
    page.close()
