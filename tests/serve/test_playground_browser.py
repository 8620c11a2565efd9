"""The playground page in a real headless Chromium (Debian's package), driven with Playwright.

A person's path: open the page, type a prompt, set the sliders, press Generate, watch the text stream in, read
tokens/s, press Stop. The browser is Debian's ``chromium`` (installed by ``make browser``, or by this test's
set-up when it runs as root); Playwright only drives it (``executable_path``), it never downloads a browser.

Screenshots go to ``$LLM_LAB_TEST_ARTIFACTS`` when set (``make browser-test`` uses ``test-artifacts/``, which git
ignores), else to the test's ``tmp_path``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import serve_in_thread

from llm_lab.core.decode import generate
from llm_lab.core.package.io import load_model_package
from llm_lab.serve import create_app

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_or_install_chromium() -> str:
    """Debian's chromium, installed with apt-get when missing and allowed; skip loudly when it cannot be had."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found:
        return found
    reason = ""
    if os.name == "posix" and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, env=env, timeout=600)
            subprocess.run(
                ["apt-get", "install", "-y", "-q", "chromium"], check=True, capture_output=True, env=env, timeout=900
            )
        except (subprocess.SubprocessError, OSError) as error:
            reason = f"apt-get install chromium failed: {error}"
        found = shutil.which("chromium")
        if found:
            return found
    else:
        reason = "not root or no apt-get, so the test cannot install it (run `make browser` as root)"
    message = f"BROWSER TEST SKIPPED: Debian's chromium is not installed and {reason or 'could not be installed'}"
    warnings.warn(message, stacklevel=1)
    pytest.skip(message)


@pytest.fixture(scope="module")
def chromium() -> str:
    return find_or_install_chromium()


@pytest.fixture(scope="module")
def browser_context(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is pinned in requirements-dev.txt")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh --user-data-dir
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1100, "height": 760},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def slow_server(package_dir: Path) -> Iterator[tuple[str, Any]]:
    """The package served under uvicorn, with each forward pass slowed down so streaming is visible."""
    config, tokenizer, model = load_model_package(package_dir)
    model.register_forward_pre_hook(lambda _module, _args: time.sleep(0.02))
    with serve_in_thread(create_app((config, tokenizer, model), model_name="tiny-char")) as server:
        yield server.base_url, (config, tokenizer, model)


@pytest.fixture
def artifact_dir(tmp_path: Path) -> Path:
    configured = os.environ.get("LLM_LAB_TEST_ARTIFACTS")
    directory = Path(configured) if configured else tmp_path
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def set_slider(page: Any, selector: str, value: float) -> None:
    # A person drags the slider; the page listens to "input" events, which a drag fires.
    page.eval_on_selector(
        selector, "(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input', {bubbles: true})); }", value
    )


def test_prompt_streams_into_the_page(browser_context: Any, slow_server: Any, artifact_dir: Path) -> None:
    base_url, (_, tokenizer, model) = slow_server
    page = browser_context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    page.goto(base_url)
    page.wait_for_function("document.getElementById('model-name').textContent === 'tiny-char'")
    assert page.inner_text("#context-length") == "64"
    assert page.get_attribute("#max-tokens", "max") == "64"  # the slider offers no more than the server allows

    page.fill("#prompt", "")
    page.type("#prompt", "the quick")
    set_slider(page, "#temperature", 0)
    set_slider(page, "#max-tokens", 50)
    page.fill("#seed", "1")
    assert page.inner_text("#temperature-value") == "0"
    assert page.inner_text("#max-tokens-value") == "50"
    assert page.inner_text("#top-k-value") == "off"

    # Record every length the output takes, from inside the page, as it changes.
    page.evaluate(
        """() => {
            window.__lengths = [];
            const target = document.getElementById('output-text');
            new MutationObserver(() => window.__lengths.push(target.textContent.length))
                .observe(target, {childList: true, characterData: true, subtree: true});
        }"""
    )
    page.click("#generate")
    page.wait_for_function("document.body.dataset.state === 'running'")
    assert page.is_disabled("#generate") and page.is_enabled("#stop")
    page.wait_for_function("document.body.dataset.state === 'idle'", timeout=30_000)

    want = generate(model, tokenizer.encode("the quick"), 50, temperature=0, tokenizer=tokenizer).texts[0]
    assert page.inner_text("#output-prompt") == "the quick"
    assert page.text_content("#output-text") == want
    lengths = page.evaluate("window.__lengths")
    partial = sorted({n for n in lengths if 0 < n < len(want)})
    assert len(partial) >= 5, f"the text did not stream in: lengths seen {lengths}"
    assert lengths == sorted(lengths), "the text only grows while streaming"
    stats = page.inner_text("#stats")
    assert "50 tokens" in stats and "tokens/s" in stats and "finished: length" in stats
    assert page.inner_text("#error") == ""
    assert not console_errors
    page.screenshot(path=str(artifact_dir / "playground-streamed.png"), full_page=True)
    page.close()


@pytest.mark.parametrize(
    ("prompt", "room"),
    [("the quick brown", 64 - 15 + 1), ("the quick brown fox jumps over the lazy dog, the qu", 64 - 51 + 1)],
)  # room: context 64 minus the prompt's tokens (one per character), plus the last token, never fed back
def test_first_click_with_every_default_generates_text(
    browser_context: Any, slow_server: Any, artifact_dir: Path, prompt: str, room: int
) -> None:
    """A newcomer's first click: type a prompt, touch nothing else, press Generate: text, no error."""
    base_url, (_, tokenizer, _) = slow_server
    assert len(tokenizer.encode(prompt)) == 64 + 1 - room
    page = browser_context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    page.goto(base_url)
    page.wait_for_function("document.getElementById('model-name').textContent === 'tiny-char'")
    page.type("#prompt", prompt)
    page.click("#generate")  # at once: the click itself fits the slider to the prompt first
    page.wait_for_function("document.body.dataset.state === 'idle' && document.getElementById('stats').textContent")
    assert page.inner_text("#error") == ""
    assert page.text_content("#output-text") != ""
    assert page.get_attribute("#max-tokens", "max") == str(room)
    default = min(64, room)
    assert page.input_value("#max-tokens") == str(default) and page.inner_text("#max-tokens-value") == str(default)
    assert f"{default} tokens" in page.inner_text("#stats") and "finished: length" in page.inner_text("#stats")
    assert f"prompt: {64 + 1 - room} tokens; room for {room} new" in page.inner_text("#max-tokens-room")
    assert not console_errors
    page.screenshot(path=str(artifact_dir / f"playground-first-click-{len(prompt)}.png"), full_page=True)
    page.close()


def test_a_picked_max_tokens_is_kept_while_it_fits(browser_context: Any, slow_server: Any) -> None:
    base_url, _ = slow_server
    page = browser_context.new_page()
    page.goto(base_url)
    page.wait_for_function("document.getElementById('model-name').textContent === 'tiny-char'")
    page.type("#prompt", "to")
    page.wait_for_function("document.getElementById('max-tokens').max === '63'")
    set_slider(page, "#max-tokens", 20)
    page.type("#prompt", " be or not")  # 12 tokens: room 53, the 20 picked still fits
    page.wait_for_function("document.getElementById('max-tokens').max === '53'")
    assert page.input_value("#max-tokens") == "20"
    page.fill("#prompt", "e" * 60)  # room 5: the pick is lowered to fit
    page.wait_for_function("document.getElementById('max-tokens').max === '5'")
    assert page.input_value("#max-tokens") == "5"
    page.close()


def test_stop_button_aborts_generation(browser_context: Any, slow_server: Any, artifact_dir: Path) -> None:
    base_url, _ = slow_server
    page = browser_context.new_page()
    page.goto(base_url)
    page.wait_for_function("document.getElementById('model-name').textContent === 'tiny-char'")
    page.fill("#prompt", "to be")
    set_slider(page, "#max-tokens", 60)  # 60 tokens at >= 20 ms each: over a second
    page.click("#generate")
    page.wait_for_function("document.getElementById('output-text').textContent.length >= 3")
    page.click("#stop")
    page.wait_for_function("document.body.dataset.state === 'idle'")
    shown = len(page.text_content("#output-text"))
    assert 3 <= shown < 60
    assert "stopped" in page.inner_text("#stats")
    assert page.is_enabled("#generate")
    page.screenshot(path=str(artifact_dir / "playground-stopped.png"), full_page=True)

    # A bad prompt shows the server's message, naming the problem.
    page.fill("#prompt", "QQQ")
    page.click("#generate")
    page.wait_for_function("document.getElementById('error').textContent.length > 0")
    assert "character 'Q'" in page.inner_text("#error")
    page.close()
