"""A tampered or damaged checkpoint, read by every command that reads one (`train --resume`, `sample`, `package
create`, `train --init-from`): one line naming the file and what is wrong, and the run left as it was."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from test_train_safety import TEXT, TINY
from train_helpers import _error, _snapshot

import llm_lab.cli
from llm_lab.cli import main


@pytest.fixture(autouse=True)
def _commands(monkeypatch):
    monkeypatch.setattr(llm_lab.cli, "_COMMAND_MODULES", ("train", "sample", "package"))


@pytest.fixture(scope="module")
def _trained_once(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("template")
    (base / "tiny.json").write_text(json.dumps(TINY))
    (base / "corpus.txt").write_text(TEXT)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llm_lab.cli, "_COMMAND_MODULES", ("train",))
        args = ["--config", base / "tiny.json", "--data", base / "corpus.txt", "--out", base / "run", "--quiet"]
        assert main(["train", *map(str, args)]) == 0
    return base


@pytest.fixture
def run(_trained_once, tmp_path, capsys) -> Path:
    shutil.copytree(_trained_once, tmp_path, dirs_exist_ok=True)
    capsys.readouterr()
    return tmp_path / "run"


def _tamper(run: Path, change, files=("last.pt", "best_val.pt")) -> None:
    for name in files:
        path = run / "checkpoints" / name
        checkpoint = torch.load(path, weights_only=True)
        change(checkpoint)
        torch.save(checkpoint, path)


def _set(key, value):
    def change(checkpoint):
        checkpoint[key] = value

    return change


def _model(edit):
    def change(checkpoint):
        edit(checkpoint["model"])

    return change


WEIGHT_CASES = {
    "wrong shape": (
        _model(lambda m: m.__setitem__("final_norm.weight", torch.zeros(17))),
        r"last.pt: weights do not match the model config \(wrong shapes: final_norm.weight is \(17,\) but the model "
        r"expects \(16,\)\)",
    ),
    "missing tensor": (
        _model(lambda m: m.pop("final_norm.bias")),
        r"last.pt: weights do not match the model config \(missing tensors: final_norm.bias\)",
    ),
    "extra tensor": (
        _model(lambda m: m.__setitem__("extra.weight", torch.zeros(3))),
        r"last.pt: weights do not match the model config \(unexpected tensors: extra.weight\)",
    ),
    "weight stored as int64": (
        _model(lambda m: m.__setitem__("final_norm.weight", torch.ones(16, dtype=torch.int64))),
        r"last.pt: weights do not match the model config \(wrong dtypes: final_norm.weight is int64 but the model "
        r"expects floating point\)",
    ),
    "negative step": (_set("step", -5), r"last.pt: damaged checkpoint: step is -5, expected a non-negative integer"),
}


def _rng(edit):
    def change(checkpoint):
        edit(checkpoint["rng"]["states"][0])

    return change


RESUME_CASES = WEIGHT_CASES | {
    "empty RNG states": (
        lambda c: c["rng"].__setitem__("states", []),
        r"last.pt: damaged checkpoint: rng is not \{'world_size': W, 'states': \[one RNG state per process\]\}",
    ),
    "garbage torch RNG state": (
        _rng(lambda s: s.__setitem__("torch", torch.zeros(5, dtype=torch.uint8))),
        r"last.pt: damaged checkpoint: RNG state of process 0: the torch RNG state is damaged \(Expected a "
        r"CPUGeneratorImplState of size \d+",
    ),
    "garbage python RNG state": (
        _rng(lambda s: s.__setitem__("python", (3, [1, 2], None))),
        r"last.pt: damaged checkpoint: RNG state of process 0: the python RNG state is damaged",
    ),
    "garbage numpy RNG state": (
        _rng(lambda s: s["numpy"].__setitem__("keys", torch.zeros(3, dtype=torch.int64))),
        r"last.pt: damaged checkpoint: RNG state of process 0: the numpy RNG state is damaged",
    ),
    "garbage generator state of the right size": (
        lambda c: c["data_state"]["generators"][0].zero_(),
        r"last.pt: damaged checkpoint: the batch sampler's generator state of process 0 is damaged \(Invalid mt19937",
    ),
    "short generator state": (
        lambda c: c["data_state"].__setitem__("generators", [torch.zeros(7, dtype=torch.uint8)]),
        r"the batch sampler's generator state of process 0 is damaged \(Expected a CPUGeneratorImplState",
    ),
    "tokens_seen not a number": (
        _set("tokens_seen", "abc"),
        r"last.pt: damaged checkpoint: tokens_seen is 'abc', expected a non-negative integer",
    ),
    "best_step after step": (
        _set("best_step", 99),
        r"last.pt: damaged checkpoint: best_step is 99, expected an integer from 0 to step \(6\)",
    ),
    "optimizer state of another shape": (
        lambda c: c["optimizer"]["state"][0].__setitem__("exp_avg", torch.zeros(3)),
        r"last.pt: damaged checkpoint: the optimizer's exp_avg of parameter 0 is \(3,\) but the parameter is "
        r"\(31, 16\)",
    ),
    "optimizer of other parameter groups": (
        lambda c: c["optimizer"]["param_groups"].pop(),
        r"last.pt: damaged checkpoint: the optimizer state has parameter groups of \[8\] parameters but this run's "
        r"optimizer has \[8, 12\]",
    ),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_refuses_a_damaged_checkpoint_and_leaves_the_run_untouched(run, capsys, case):
    change, message = RESUME_CASES[case]
    _tamper(run, change)
    before = _snapshot(run)
    args = ["--data", run.parent / "corpus.txt", "--out", run, "--resume", "--set", "train.max_steps=9", "--quiet"]
    assert main(["train", *map(str, args)]) == 2
    err = _error(capsys)
    assert err.startswith(f"llm-lab: error: {run}/checkpoints/last.pt") and re.search(message, err), err
    assert _snapshot(run) == before


@pytest.mark.parametrize("case", list(WEIGHT_CASES))
@pytest.mark.parametrize("command", ["sample", "package create", "train --init-from"])
def test_every_reader_refuses_damaged_weights(run, tmp_path, capsys, case, command):
    change, message = WEIGHT_CASES[case]
    _tamper(run, change)
    before = _snapshot(run)
    if command == "sample":
        args = ["sample", run, "--prompt", "the", "--max-new-tokens", "3", "--checkpoint", "last"]
    elif command == "package create":
        args = ["package", "create", run, tmp_path / "package"]
    else:
        args = ["train", "--config", run.parent / "tiny.json", "--data", run.parent / "corpus.txt", "--out",
                tmp_path / "tuned", "--init-from", run, "--quiet"]
    assert main([str(a) for a in args]) == 2
    # package create and --init-from read the best checkpoint too: the same damage, named in either file.
    expected = message if command == "sample" else message.replace("last.pt", r"(last|best_val)\.pt")
    err = _error(capsys)
    assert re.search(expected, err), err
    assert _snapshot(run) == before
    assert not (tmp_path / "package").exists() and not (tmp_path / "tuned").exists()
