"""The playground's Chat view in headless Chromium (Debian's package, driven by Playwright, as in
``test_playground_browser.py``): a conversation of several turns with a system prompt, each reply streamed into a new
assistant turn; the whole history sent as ``messages`` to ``/v1/chat/completions``; Clear; a model without a chat
template; a message the tokenizer refuses.

The reply shown is checked against ``/v1/chat/completions`` (greedy, not streamed) for the very request the page
sent, and the page's "What the model sees" against the library's :class:`~llm_lab.core.chat.ChatTemplate`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_helpers import make_package, serve_in_thread
from test_playground_browser import artifact_dir, browser_context, chromium  # noqa: F401  (shared fixtures)

from llm_lab.core.chat import ChatTemplate
from llm_lab.core.chat.reply import reply
from llm_lab.core.package.io import load_model_package
from llm_lab.serve import create_app
from llm_lab.serve.playground import DEFAULT_MAX_TOKENS

CONTEXT = 256
SYSTEM = "be brief."
USER_TURNS = ["to be, or not", "the quick brown fox", "a small text"]


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """A random character model whose tokenizer has the chat tokens, each forward slowed so streaming shows."""
    path = make_package(tmp_path_factory.mktemp("chat") / "tiny-chat", context_length=CONTEXT, seed=1, chat=True)
    config, tokenizer, model = load_model_package(path)
    model.register_forward_pre_hook(lambda _module, _args: time.sleep(0.01))
    with serve_in_thread(create_app((config, tokenizer, model), model_name="tiny-chat")) as server:
        yield server.base_url, (tokenizer, model)


def open_page(context: Any, base_url: str, model_name: str) -> tuple[Any, list[str]]:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # A refused request is logged by the browser as a console error, so only the tests that send none check these.
    page.on("console", lambda message: message.type == "error" and errors.append("console: " + message.text))
    page.goto(base_url)
    page.wait_for_function(f"document.getElementById('model-name').textContent === '{model_name}'")
    page.click("#tab-chat")
    return page, errors


def chat_requests(page: Any) -> list[dict[str, Any]]:
    """Record the body of every request the page sends to /v1/chat/completions."""
    sent: list[dict[str, Any]] = []
    page.on("request", lambda r: r.url.endswith("/v1/chat/completions") and sent.append(json.loads(r.post_data)))
    return sent


def turns(page: Any) -> list[tuple[str, str]]:
    shown = page.eval_on_selector_all(
        "#chat-log .turn", "els => els.map(e => [e.dataset.role, e.querySelector('.content').textContent])"
    )
    return [tuple(turn) for turn in shown]


def test_a_multi_turn_conversation(browser_context: Any, chat_server: Any, artifact_dir: Path) -> None:  # noqa: F811
    base_url, (tokenizer, model) = chat_server
    template = ChatTemplate(tokenizer)
    page, errors = open_page(browser_context, base_url, "tiny-chat")
    sent = chat_requests(page)
    assert page.is_visible("#chat-view") and not page.is_visible("#complete-view")
    page.eval_on_selector("#temperature", "el => { el.value = '0'; el.dispatchEvent(new Event('input')); }")
    page.fill("#chat-system", SYSTEM)
    history: list[dict[str, str]] = []
    for number, text in enumerate(USER_TURNS):
        page.fill("#chat-input", text)
        if number == 0:  # record every length the first reply takes while it streams in
            page.evaluate(
                """() => {
                    window.__lengths = [];
                    new MutationObserver(() => {
                        const turn = document.querySelector('#chat-log .turn.assistant .content');
                        if (turn) window.__lengths.push(turn.textContent.length);
                    }).observe(document.getElementById('chat-log'),
                               {childList: true, characterData: true, subtree: true});
                }"""
            )
        if number == 2:
            page.press("#chat-input", "Enter")  # Enter sends, as Send does
        else:
            page.click("#chat-send")
        page.wait_for_function(
            f"document.body.dataset.state === 'idle' && document.querySelectorAll('#chat-log .turn').length === "
            f"{2 * (number + 1)}",
            timeout=60_000,
        )
        assert page.inner_text("#chat-error") == ""
        # The whole history went out as OpenAI messages, the system prompt first; the server renders them.
        body = sent[number]
        messages = [{"role": "system", "content": SYSTEM}, *history, {"role": "user", "content": text}]
        assert body["messages"] == messages and body["stream"] is True and body["temperature"] == 0
        prompt_tokens = len(template.prompt_ids(messages))
        room = min(CONTEXT, CONTEXT + 1 - prompt_tokens)
        assert body["max_tokens"] == min(DEFAULT_MAX_TOKENS, room)  # the default follows the room left
        # The reply shown is the one the API gives for the same request (greedy), not streamed.
        plain = {**body, "stream": False}
        del plain["stream_options"]
        answer = httpx.post(f"{base_url}/v1/chat/completions", json=plain, timeout=60).json()
        answer_text = answer["choices"][0]["message"]["content"]
        assert turns(page)[-2:] == [("user", text), ("assistant", answer_text)]
        assert answer_text == reply(model, template, messages, body["max_tokens"], temperature=0.0)  # the library's
        assert answer_text, "the tiny model's greedy reply is empty: pick another seed"
        finish = answer["choices"][0]["finish_reason"]
        assert f"finished: {finish}" in page.inner_text("#chat-stats")
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer_text}]
        if number == 0:
            lengths = page.evaluate("window.__lengths")
            partial = sorted({n for n in lengths if 0 < n < len(answer_text)})
            assert len(partial) >= 3, f"the reply did not stream in: lengths seen {lengths}"
    assert page.input_value("#chat-input") == ""
    # "What the model sees" is the library's rendering of the conversation with the (empty) message being typed.
    page.wait_for_function("document.getElementById('chat-rendered').textContent.endsWith('<|assistant|>')")
    shown = [{"role": "system", "content": SYSTEM}, *history, {"role": "user", "content": ""}]
    assert page.text_content("#chat-rendered") == tokenizer.decode(template.prompt_ids(shown))
    assert page.text_content("#chat-rendered").startswith(f"<|system|>{SYSTEM}<|end|><|user|>{USER_TURNS[0]}<|end|>")
    page.screenshot(path=str(artifact_dir / "playground-chat.png"), full_page=True)

    page.click("#chat-clear")
    assert turns(page) == []
    page.fill("#chat-input", "to be")
    page.click("#chat-send")
    page.wait_for_function("document.querySelectorAll('#chat-log .turn').length === 2 && "
                           "document.body.dataset.state === 'idle'", timeout=60_000)
    assert sent[-1]["messages"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "to be"}]
    assert not errors
    page.close()


def test_a_refused_message_is_shown_and_the_conversation_kept(
    browser_context: Any, chat_server: Any  # noqa: F811
) -> None:
    base_url, _ = chat_server
    page, errors = open_page(browser_context, base_url, "tiny-chat")
    page.fill("#chat-input", "QQQ")  # no 'Q' in the character vocabulary
    page.click("#chat-send")
    page.wait_for_function("document.getElementById('chat-error').textContent.length > 0")
    assert "messages: " in page.inner_text("#chat-error") and "character 'Q'" in page.inner_text("#chat-error")
    assert turns(page) == [] and page.input_value("#chat-input") == "QQQ"  # nothing lost, ready to edit
    assert page.is_enabled("#chat-send")
    page.fill("#chat-input", "")
    page.click("#chat-send")
    assert page.inner_text("#chat-error") == "nothing to send: type a message first"
    # A conversation longer than the context is refused (not truncated), and the page says why.
    page.fill("#chat-system", "to be, or not to be. " * 13)  # 273 characters, one token each: with "the fox"
    # and 5 chat tokens (system, end, user, end, assistant), 285 tokens
    page.fill("#chat-input", "the fox")
    page.wait_for_function("document.getElementById('max-tokens-room').textContent.includes('fills the context')")
    page.click("#chat-send")
    page.wait_for_function("document.getElementById('chat-error').textContent.includes('context')")
    assert page.inner_text("#chat-error").startswith("messages: the conversation is 285 tokens long once rendered, "
                                                     "more than this model's context of 256 tokens; it is refused")
    assert turns(page) == []
    assert all(e.startswith("console: Failed to load resource: the server responded with a status of 4")
               for e in errors)
    page.close()


def test_a_model_without_a_chat_template_says_so(
    browser_context: Any, package_dir: Path, artifact_dir: Path  # noqa: F811
) -> None:
    with serve_in_thread(create_app(package_dir, model_name="tiny-char")) as server:
        page, errors = open_page(browser_context, server.base_url, "tiny-char")
        page.wait_for_selector("#chat-note:not([hidden])")
        note = page.inner_text("#chat-note")
        assert note.startswith("This model has no chat template, so it cannot chat: its tokenizer has no chat tokens.")
        assert page.is_disabled("#chat-send") and page.is_disabled("#chat-input")
        page.screenshot(path=str(artifact_dir / "playground-no-chat.png"), full_page=True)
        # The completions view still works.
        page.click("#tab-complete")
        page.fill("#prompt", "the")
        page.click("#generate")
        page.wait_for_function("document.body.dataset.state === 'idle' && document.getElementById('stats')"
                               ".textContent.includes('finished')", timeout=60_000)
        assert page.text_content("#output-text") != "" and page.inner_text("#error") == ""
        assert not errors
        page.close()
