"""Missing optional dependencies name the extra that installs them (pyproject.toml [project.optional-dependencies])."""

from __future__ import annotations

import builtins
import tomllib
from pathlib import Path

import pytest

from llm_lab.cli import main

REPO = Path(__file__).resolve().parents[2]


def hide_modules(monkeypatch, *names: str) -> None:
    """Make ``import NAME`` fail as it does where the package is not installed."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.split(".")[0] in names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_the_extras_exist():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"serve", "hf", "dev"} <= set(extras)
    assert {d.split(">")[0] for d in extras["serve"]} == {"fastapi", "uvicorn"}
    assert {d.split(">")[0] for d in extras["hf"]} == {"transformers", "tokenizers"}


def test_serve_without_its_extra_names_it(monkeypatch, tmp_path, capsys):
    hide_modules(monkeypatch, "uvicorn")
    assert main(["serve", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert 'serving needs FastAPI and uvicorn (uvicorn is missing): pip install "foundry-llm[serve]"' in err
    assert "requirements-dev" not in err


def test_hf_interop_without_its_extra_names_it(monkeypatch):
    from llm_lab.core.package import hf_io
    from llm_lab.core.package.layout import PackageError

    hide_modules(monkeypatch, "transformers")
    with pytest.raises(PackageError, match=r'pip install "foundry-llm\[hf\]"'):
        hf_io._import_transformers()
