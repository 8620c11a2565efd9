"""A real SIGKILL at each step of a package replacement leaves a loadable package at the path: the old one when the
new one was not yet complete, the new one from then on. The next reader finishes or rolls back the swap."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.package.io import load_model_package, save_model_package
from llm_lab.core.tokenization import CharTokenizer

# Runs in a child process: replaces the package at argv[1] with new weights (also saved to argv[2] for comparison)
# and SIGKILLs itself just before the swap's n-th rename (argv[3] = 1, 2, 3), or just before it deletes the
# previous package (argv[3] = 4).
WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import llm_lab.utils.dirswap as dirswap
    from llm_lab.core.model.gpt import MiniGPT
    from llm_lab.core.package.io import load_model_package, save_model_package

    path, new_state, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config, tokenizer, _ = load_model_package(path)
    torch.manual_seed(1)
    model = MiniGPT(config)
    torch.save(model.state_dict(), new_state)

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    class RenamesThenDies:
        calls = 0
        def __getattr__(self, name):
            return getattr(os, name)
        def replace(self, src, dst):
            RenamesThenDies.calls += 1
            if RenamesThenDies.calls == kill_at:
                die()
            os.replace(src, dst)

    dirswap.os = RenamesThenDies()
    if kill_at == 4:
        dirswap._remove = lambda path: die()
    save_model_package(path, config, tokenizer, model)
    print("not killed")
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kill_at", "survivor"),
    [(1, "old"), (2, "new"), (3, "new"), (4, "new")],
    ids=["before-staged-to-new", "before-old-aside", "before-new-in-place", "before-old-deleted"],
)
def test_kill_at_each_swap_step_leaves_a_loadable_package(tmp_path, kill_at, survivor):
    tok = CharTokenizer.from_text("to be, or not to be")
    config = MiniGPTConfig(vocab_size=tok.vocab_size, context_length=16, n_layer=1, n_head=2, n_embd=16)
    torch.manual_seed(0)
    old = MiniGPT(config)
    path = save_model_package(tmp_path / "pkg", config, tok, old)
    new_state = tmp_path / "new_state.pt"

    proc = subprocess.run(
        [sys.executable, "-c", WRITER, str(path), str(new_state), str(kill_at)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".pkg."))
    assert hidden, "the kill should have left the swap half done"
    if kill_at == 3:
        assert not path.exists()  # the moment the old code lost the package: only the next reader can repair it

    _, _, loaded = load_model_package(path)
    expected = old.state_dict() if survivor == "old" else torch.load(new_state, weights_only=True)
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new_state.pt", "pkg"]  # the swap was finished
    save_model_package(path, config, tok, old)  # and the next writer works as usual
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new_state.pt", "pkg"]
