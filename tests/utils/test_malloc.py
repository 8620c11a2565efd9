"""glibc's malloc keeps freed memory for reuse once asked: a large block comes from the heap and stays there."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llm_lab.utils import malloc

glibc_only = pytest.mark.skipif(malloc._glibc() is None, reason="the C library of this process is not glibc")


# Run in a fresh interpreter (a clean heap): where glibc puts a 16 MiB tensor, and what it keeps once it is
# freed, read from glibc's own counters (mallinfo2), so the answer does not depend on page sizes (huge pages).
_WHERE = """
import ctypes, sys, torch
from llm_lab.utils import malloc
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
assert (malloc.retain_freed_memory if sys.argv[1] == "retain" else malloc.restore_malloc_defaults)()
before = libc.mallinfo2().hblkhd
tensor = torch.empty(16 * 2**20, dtype=torch.uint8).fill_(1)
mapped = libc.mallinfo2().hblkhd - before
del tensor
print(mapped, libc.mallinfo2().fordblks)
"""


def _where_a_big_block_goes(mode: str) -> tuple[int, int]:
    """(bytes mmap'ed for the tensor while it lives, bytes free in the heap after it is freed)."""
    done = subprocess.run([sys.executable, "-c", _WHERE, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    mapped, free_in_heap = map(int, done.stdout.split())
    return mapped, free_in_heap


needs_mallinfo2 = pytest.mark.skipif(
    malloc._glibc() is None or not hasattr(malloc._glibc(), "mallinfo2"), reason="needs glibc 2.33 or newer"
)


@needs_mallinfo2
def test_freed_blocks_stay_in_the_process_for_reuse():
    size = 16 * 2**20
    # glibc's defaults: a block this large is mmap'ed on its own and unmapped on free (the next step faults it in).
    mapped, _ = _where_a_big_block_goes("default")
    assert mapped >= size
    # Retained: it comes from the heap, and once freed it stays there for the next allocation.
    mapped, free_in_heap = _where_a_big_block_goes("retain")
    assert mapped < size // 16
    assert free_in_heap >= size


def test_without_glibc_nothing_is_tuned(monkeypatch):
    monkeypatch.setattr(malloc, "_glibc", lambda: None)
    assert malloc.retain_freed_memory() is False
    assert malloc.restore_malloc_defaults() is False


@pytest.mark.parametrize("platform", ["win32", "darwin"])
def test_other_systems_are_not_probed(monkeypatch, platform):
    """Only Linux is asked for glibc (Windows' ctypes cannot even open the process's own symbols)."""
    monkeypatch.setattr(malloc.sys, "platform", platform)
    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda name: pytest.fail("CDLL must not be called"))
    malloc._glibc.cache_clear()
    try:
        assert malloc._glibc() is None
        assert malloc.retain_freed_memory() is False
    finally:
        malloc._glibc.cache_clear()


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
