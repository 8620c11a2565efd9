"""Shared pytest fixtures: deterministic seeds and the optional real corpus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from llm_lab.utils.threads import resolve_threads

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO_ROOT.parent / "shared" / "data" / "tiny_shakespeare.txt"

# The tests, and the commands they run (in-process and in subprocesses), use one CPU thread unless the caller
# chose (LLM_LAB_THREADS=2 or auto): the models are tiny, no result depends on it, `auto` would watch the CPUs
# for 0.1 s at every command, and torch's default of one thread per core makes the suite several times slower
# whenever anything else runs on the machine.
os.environ.setdefault("LLM_LAB_THREADS", "1")
torch.set_num_threads(resolve_threads(os.environ["LLM_LAB_THREADS"]))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # a command run in-process sets them for the whole process


@pytest.fixture
def shakespeare_path() -> Path | None:
    """The tiny Shakespeare corpus beside the repository, or None where it is absent."""
    return SHAKESPEARE if SHAKESPEARE.is_file() else None


@pytest.fixture
def small_text() -> str:
    """A small, self-made text for tests that must run anywhere."""
    lines = [
        "the quick brown fox jumps over the lazy dog.",
        "a small model learns the patterns of a small text.",
        "to be, or not to be: that is the question.",
        "all that glitters is not gold; all who wander are not lost.",
    ]
    return "\n".join(lines * 40) + "\n"
