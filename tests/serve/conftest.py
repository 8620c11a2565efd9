"""Fixtures for the serving tests: a real saved package and a real uvicorn server on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import RunningServer, make_package, serve_in_thread

from llm_lab.core.package.io import load_model_package


@pytest.fixture(scope="session")
def package_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_package(tmp_path_factory.mktemp("serve") / "tiny-char")


@dataclass
class Reference:
    """A second, independent load of the package, to compute what the server must answer."""

    config: Any
    tokenizer: Any
    model: Any


@pytest.fixture(scope="session")
def reference(package_dir: Path) -> Reference:
    return Reference(*load_model_package(package_dir))


@pytest.fixture(scope="module")
def server(package_dir: Path) -> Iterator[RunningServer]:
    """The package served by ``create_app(path)`` under uvicorn, shared by a test module."""
    from llm_lab.serve import create_app

    with serve_in_thread(create_app(package_dir)) as running:
        yield running
