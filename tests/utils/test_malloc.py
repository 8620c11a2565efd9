"""glibc's malloc keeps freed memory for reuse once asked: a second allocation of the same size faults no pages."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from llm_lab.utils import malloc

glibc_only = pytest.mark.skipif(malloc._glibc() is None, reason="the C library of this process is not glibc")


# Run in a fresh interpreter (a clean heap): a training step's pattern in miniature, tensors of 8, 16 and 4 MiB
# allocated, written and freed together, cycle after cycle. Prints the minor page faults of 10 cycles after 3 of
# warm-up.
_CYCLES = """
import resource, sys, torch
from llm_lab.utils import malloc
assert (malloc.retain_freed_memory if sys.argv[1] == "retain" else malloc.restore_malloc_defaults)()
def cycle():
    tensors = [torch.empty(n * 2**20, dtype=torch.uint8).fill_(1) for n in (8, 16, 4)]
    del tensors
for _ in range(3):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _CYCLES, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@glibc_only
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    pages = 10 * 28 * 2**20 // resource.getpagesize()  # every page of every tensor of the 10 cycles
    # glibc's defaults: blocks this large are mmap'ed and unmapped on free, so most pages fault in every cycle.
    assert _page_faults("default") > 0.6 * pages
    # Retained: the cycles reuse the heap the warm-up grew.
    assert _page_faults("retain") < 0.25 * pages


def test_without_glibc_nothing_is_tuned(monkeypatch):
    monkeypatch.setattr(malloc, "_glibc", lambda: None)
    assert malloc.retain_freed_memory() is False
    assert malloc.restore_malloc_defaults() is False


def test_every_command_and_a_cpu_trainer_ask_for_it(monkeypatch, tmp_path):
    """Both entry points call it (recorded here: the setting is process-wide, and already on in this process)."""
    import numpy as np

    import llm_lab.cli
    import llm_lab.core.train.trainer as trainer_module
    from llm_lab.core.data import LanguageModelingDataset
    from llm_lab.core.model import MiniGPT, MiniGPTConfig
    from llm_lab.core.train import Trainer, TrainerConfig

    calls: list[str] = []
    monkeypatch.setattr(llm_lab.cli, "retain_freed_memory", lambda: calls.append("cli"))
    monkeypatch.setattr(trainer_module, "retain_freed_memory", lambda: calls.append("trainer"))
    # A command that fails on its input still ran the start-up (exit code 2: a user error).
    assert llm_lab.cli.main(["package", "inspect", str(tmp_path / "missing")]) == 2
    assert calls == ["cli"]
    model = MiniGPT(MiniGPTConfig(vocab_size=11, context_length=8, n_layer=1, n_head=1, n_embd=8))
    data = LanguageModelingDataset(np.arange(64, dtype=np.uint16) % 11, 8)
    Trainer(model, TrainerConfig(batch_size=2, max_steps=1, device="cpu"), data, progress=False)
    assert calls == ["cli", "trainer"]
