"""Shared by the hard-days tests (tests/cli/test_hard_days.py, test_full_filesystem.py): a template of every kind
of folder the project writes, and every write path as a command."""

from __future__ import annotations

import json
from pathlib import Path

from package_helpers import bpe_tokenizer, make_package

from llm_lab.cli import main

TINY = {
    "model": {"context_length": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
    "train": {"batch_size": 4, "max_steps": 6, "warmup_steps": 2, "eval_interval": 3, "eval_batches": 2,
              "log_interval": 1, "device": "cpu", "precision": "fp32", "peak_flops": 1e12},
    "tokenizer": {"type": "char"},
}  # fmt: skip
TEXT = "\n".join(["the quick brown fox jumps over the lazy dog.", "to be, or not to be: that is the question."] * 200)



def make_template(base: Path) -> Path:
    """A corpus, a config, a finished run, its package, and a Hugging Face export of a BPE package, in ``base``."""
    (base / "corpus.txt").write_text(TEXT)
    (base / "tiny.json").write_text(json.dumps(TINY))
    assert main(["train", "--config", str(base / "tiny.json"), "--data", str(base / "corpus.txt"), "--out",
                 str(base / "run"), "--quiet"]) == 0  # fmt: skip
    assert main(["package", "create", str(base / "run"), str(base / "pkg")]) == 0
    make_package(base / "bpe-pkg", bpe_tokenizer())
    assert main(["export-hf", str(base / "bpe-pkg"), str(base / "hf")]) == 0
    return base


def hidden_files(directory: Path) -> list[str]:
    """Temporary files, staging directories and lock files anywhere under ``directory``."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob(".*"))


# Each write path: (arguments, the folder it writes, what must stay as it was).
def write_cases(w: Path) -> dict[str, tuple[list, Path, Path | None]]:
    train = ["train", "--config", w / "tiny.json", "--data", w / "corpus.txt", "--quiet"]
    return {
        "train": ([*train, "--out", w / "new"], w / "new", None),
        "train --overwrite": ([*train, "--out", w / "run", "--overwrite"], w / "run", w / "run"),
        "train --resume": ([*train, "--out", w / "run", "--resume", "--set", "train.max_steps=12"], w / "run",
                           w / "run" / "checkpoints"),  # fmt: skip
        "package create": (["package", "create", w / "run", w / "pkg2"], w / "pkg2", None),
        "package create --force": (["package", "create", w / "run", w / "pkg", "--force"], w / "pkg", w / "pkg"),
        "export-hf": (["export-hf", w / "pkg", w / "hf2"], w / "hf2", None),
        "export-hf --force": (["export-hf", w / "bpe-pkg", w / "hf", "--force"], w / "hf", w / "hf"),
        "import-hf": (["import-hf", w / "hf", w / "imported"], w / "imported", None),
        "data prepare": (["data", "prepare", "--tokenizer", "char", "--input", w / "corpus.txt", "--out",
                          w / "prepared", "--quiet"], w / "prepared", None),  # fmt: skip
        "sweep": (["sweep", "--config", w / "tiny.json", "--data", w / "corpus.txt", "--out", w / "sweep",
                   "--grid", "model.mlp=gelu,swiglu", "--quiet"], w / "sweep", None),  # fmt: skip
    }


