"""A sampler registered in a test reaches every surface without an edit anywhere else.

``BanToken`` below is a complete new sampler: one :class:`LogitsProcessor` subclass with one setting. Registering
it must be enough for ``generate`` to take ``ban_token=``, ``llm-lab sample`` to take ``--ban-token``, the server to
accept (and range-check) ``"ban_token"``, ``GET /v1/sampling`` to describe it and the playground to show a slider
for it whose value is sent with each request.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from serve_helpers import serve_in_thread

from llm_lab.cli import main
from llm_lab.core.decode import generate
from llm_lab.core.decode import sampling as sampling_module
from llm_lab.core.decode.sampling import LogitsProcessor, SamplingParam, register_processor
from llm_lab.core.package.io import load_model_package
from llm_lab.serve import create_app


class BanToken(LogitsProcessor):
    """Never produce one token id (-1 at the HTTP API, and the slider's far left, mean off)."""

    params = (
        SamplingParam(
            "ban_token",
            int,
            None,
            low=0,
            help="never produce this token id",
            api_off=-1,
            control=(-1, "vocab_size", 1, -1),
        ),
    )
    order = 60
    runs_when_greedy = True  # it can change an argmax

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        return logits.index_fill(-1, torch.tensor([self.config.ban_token], device=logits.device), float("-inf"))


@pytest.fixture
def ban_token(monkeypatch: pytest.MonkeyPatch) -> type[LogitsProcessor]:
    monkeypatch.setattr(sampling_module, "PROCESSORS", dict(sampling_module.PROCESSORS))  # undone after the test
    return register_processor(BanToken)


@pytest.fixture
def served(package_dir: Path, ban_token: Any) -> Iterator[tuple[str, Any]]:
    config, tokenizer, model = load_model_package(package_dir)
    with serve_in_thread(create_app((config, tokenizer, model), model_name="tiny-char")) as server:
        yield server.base_url, (tokenizer, model)


def greedy_first_token(tokenizer: Any, model: Any, prompt: str) -> int:
    return generate(model, tokenizer.encode(prompt), 1, temperature=0).token_ids[0][0]


def test_the_cli_gets_a_flag(capsys: pytest.CaptureFixture[str], package_dir: Path, ban_token: Any) -> None:
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    parser_help = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    assert "--ban-token BAN_TOKEN" in parser_help and "never produce this token id; an integer >= 0" in parser_help
    _, tokenizer, model = load_model_package(package_dir)
    banned = greedy_first_token(tokenizer, model, "the")
    argv = ["sample", str(package_dir), "--prompt", "the", "--temperature", "0", "--max-new-tokens", "12"]
    assert main([*argv, "--ban-token", str(banned)]) == 0
    want = generate(model, tokenizer.encode("the"), 12, temperature=0, ban_token=banned, tokenizer=tokenizer)
    assert capsys.readouterr().out == "the" + want.texts[0] + "\n"
    assert banned not in want.token_ids[0]
    assert main([*argv, "--ban-token", "-3"]) == 2
    err = capsys.readouterr().err
    assert err == "llm-lab: error: ban_token must be an integer >= 0 (or None to disable it), got -3\n"


def test_the_server_accepts_checks_and_describes_it(served: tuple[str, Any]) -> None:
    base_url, (tokenizer, model) = served
    described = httpx.get(f"{base_url}/v1/sampling").json()
    names = [param["name"] for param in described["params"]]
    assert names == ["repetition_penalty", "temperature", "top_k", "top_p", "min_p", "ban_token"]
    assert described["params"][-1] == {
        "name": "ban_token",
        "type": "integer",
        "default": None,
        "minimum": 0,
        "maximum": None,
        "exclusive_minimum": False,
        "exclusive_maximum": False,
        "nullable": True,
        "off": -1,
        "help": "never produce this token id",
        "control": {"min": -1, "max": "vocab_size", "step": 1, "value": -1},
    }

    banned = greedy_first_token(tokenizer, model, "to be")
    body = {"prompt": "to be", "max_tokens": 10, "temperature": 0, "ban_token": banned}
    answer = httpx.post(f"{base_url}/v1/completions", json=body).json()
    want = generate(model, tokenizer.encode("to be"), 10, temperature=0, ban_token=banned, tokenizer=tokenizer)
    assert answer["choices"][0]["text"] == want.texts[0]
    off = httpx.post(f"{base_url}/v1/completions", json={**body, "ban_token": -1}).json()
    assert (
        off["choices"][0]["text"]
        == generate(model, tokenizer.encode("to be"), 10, temperature=0, tokenizer=tokenizer).texts[0]
    )

    refused = httpx.post(f"{base_url}/v1/completions", json={**body, "ban_token": -2})
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["param"] == "ban_token"
    assert error["message"] == "ban_token: Input should be greater than or equal to -1 (got -2)"

    page = httpx.get(f"{base_url}/").text
    assert '<input id="ban-token" type="range" min="-1" max="1" step="1" value="-1" data-param="ban_token"' in page
    assert 'data-max-from="vocab_size" data-off="-1">' in page and "Ban token" in page


@pytest.mark.slow  # launches its own Chromium (about 3 s)
def test_the_playground_shows_a_slider_and_sends_it(served: tuple[str, Any]) -> None:
    from test_playground_browser import CHROMIUM_FLAGS, find_or_install_chromium, set_slider

    chromium = find_or_install_chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is pinned in requirements-dev.txt")
    base_url, (tokenizer, model) = served
    banned = greedy_first_token(tokenizer, model, "the quick")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(base_url)
            page.wait_for_function("document.getElementById('model-name').textContent === 'tiny-char'")
            assert page.get_attribute("#ban-token", "max") == str(tokenizer.vocab_size)  # from /v1/models
            assert page.inner_text("#ban-token-value") == "off"
            page.fill("#prompt", "the quick")
            set_slider(page, "#temperature", 0)
            set_slider(page, "#max-tokens", 20)
            set_slider(page, "#ban-token", banned)
            assert page.inner_text("#ban-token-value") == str(banned)
            page.click("#generate")
            page.wait_for_function("document.body.dataset.state === 'idle'", timeout=30_000)
            shown = page.text_content("#output-text")
        finally:
            browser.close()
    want = generate(model, tokenizer.encode("the quick"), 20, temperature=0, ban_token=banned, tokenizer=tokenizer)
    assert shown == want.texts[0]
    assert shown != generate(model, tokenizer.encode("the quick"), 20, temperature=0, tokenizer=tokenizer).texts[0]


def test_a_setting_named_like_a_request_field_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_lab.serve.schemas import completion_request_model

    class Seeded(LogitsProcessor):
        params = (SamplingParam("seed", int, None),)

    monkeypatch.setattr(sampling_module, "PROCESSORS", dict(sampling_module.PROCESSORS))
    register_processor(Seeded)
    with pytest.raises(ValueError, match="sampling setting 'seed' has the name of a completions request field"):
        completion_request_model()
