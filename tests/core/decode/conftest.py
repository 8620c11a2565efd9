"""Every generation in these tests decodes through a ``prepare_for_decode`` copy, however few its new tokens, so
that the parity tests here (Hugging Face, cached == uncached, batched == one prompt at a time, stream == generate)
prove the decode copy too; tests that need the other path set ``MIN_NEW_TOKENS`` themselves."""

from __future__ import annotations

import pytest

from llm_lab.core.decode import fast_linear


@pytest.fixture(autouse=True)
def _always_prepare(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_linear, "MIN_NEW_TOKENS", 1)
