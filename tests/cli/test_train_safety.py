"""`llm-lab train`: what --overwrite may replace, that every check runs before the old run is touched, sizes that
cannot fit, and the checks of --resume (data, tokenizer, max_steps, device) and of the config file itself."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import _error, _snapshot, _train

import llm_lab.cli
import llm_lab.core.train.run as run_module
from llm_lab.core.data.prepare import prepare_corpus
from llm_lab.core.tokenization import CharTokenizer
from llm_lab.core.train import load_checkpoint

TINY = {
    "model": {"context_length": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
    "train": {
        "batch_size": 4,
        "max_steps": 6,
        "warmup_steps": 2,
        "eval_interval": 3,
        "eval_batches": 2,
        "log_interval": 1,
        "device": "cpu",
        "precision": "fp32",
        "peak_flops": 1e12,
    },
    "tokenizer": {"type": "char"},
}
TEXT = "\n".join(
    ["the quick brown fox jumps over the lazy dog.", "to be, or not to be: that is the question."] * 80
) + "\n"
DEAD_PID = 99_999_999  # above Linux's largest pid: no process has it, so its leftovers are stale
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal needs a machine without CUDA")


@pytest.fixture(autouse=True)
def _only_train(monkeypatch):
    monkeypatch.setattr(llm_lab.cli, "_COMMAND_MODULES", ("train",))


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def _trained_once(tmp_path_factory) -> Path:
    """A finished 6-step run, trained once for the module (its files mention only contents, so copies resume)."""
    base = tmp_path_factory.mktemp("template")
    (base / "tiny.json").write_text(json.dumps(TINY))
    (base / "corpus.txt").write_text(TEXT)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llm_lab.cli, "_COMMAND_MODULES", ("train",))
        assert _train("--config", base / "tiny.json", "--data", base / "corpus.txt", "--out", base / "run") == 0
    return base / "run"


@pytest.fixture
def run(_trained_once, tmp_path, capsys) -> Path:
    """A copy of the finished 6-step run."""
    out = tmp_path / "run"
    shutil.copytree(_trained_once, out)
    capsys.readouterr()
    return out


def _hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# --- what --overwrite may replace --------------------------------------------------------------------------------


def test_a_folder_with_a_foreign_run_json_survives_overwrite(config, corpus, tmp_path, capsys):
    project = tmp_path / "project"
    project.mkdir()
    (project / "run.json").write_text("{}")
    (project / "package.json").write_text('{"name": "my-app"}')
    before = _snapshot(project)
    assert _train("--config", config, "--data", corpus, "--out", project, "--overwrite") == 2
    assert re.search(r"run.json was not written by this version of llm-lab \(no \"kind\": \"llm-lab run\" with "
                     r"format_version 1\), so --overwrite will not replace .*project; nothing was changed",
                     _error(capsys))
    assert _snapshot(project) == before


@pytest.mark.parametrize("foreign", ["thesis.tex", "checkpoints/notes.txt", "tokenizer/extra.json"])
def test_a_run_holding_a_foreign_file_is_not_replaced(run, config, corpus, capsys, foreign):
    (run / foreign).write_text("mine")
    before = _snapshot(run)
    assert _train("--config", config, "--data", corpus, "--out", run, "--overwrite") == 2
    assert f"holds {foreign}, which llm-lab did not write; move it out (or choose another --out)" in _error(capsys)
    assert _snapshot(run) == before


def test_overwrite_replaces_every_file_a_run_writes(run, config, corpus, tmp_path):
    (run / "loss.png").write_bytes(b"\x89PNG")  # `llm-lab plot`'s default figure is the run's too
    (run / "checkpoints" / f".last.pt.{DEAD_PID}.a1b2c3d4.tmp").write_bytes(b"half a checkpoint")
    assert _train("--config", config, "--data", corpus, "--out", run, "--overwrite", "--set", "train.max_steps=3") == 0
    assert load_checkpoint(run)["step"] == 3
    assert not (run / "loss.png").exists() and _hidden(run / "checkpoints") == []
    assert _hidden(tmp_path) == []  # the staging directory and the old run are gone


# --- every check before the old run is touched --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(["--set", "train.device=cuda"], r"train.device='cuda' but CUDA is not available", marks=NO_CUDA),
        pytest.param(["--set", "train.precision=fp16"], r"precision 'fp16' needs CUDA", marks=NO_CUDA),
        (
            ["--set", "train.batch_size=1000000000"],
            r"training with train.batch_size=1000000000 x context_length=16 needs about \d+\.\d TiB \(.*activations "
            r"\d+\.\d TiB\) for [\d,]+ parameters, but this machine has \d+\.\d GiB of memory; lower train.batch_size",
        ),
        (
            ["--set", "model.n_embd=1048576", "--set", "model.n_head=16"],
            r"needs about \d+\.\d TiB .* but this machine has \d+\.\d GiB of memory",
        ),
        (["--set", "train.max_step=3"], r"unknown key 'max_step'"),
        (["--data", "EMPTY"], r"empty.txt is empty; give a text file"),
    ],
)
def test_a_failing_overwrite_leaves_the_old_run(run, config, corpus, tmp_path, capsys, extra, message):
    if extra[:2] == ["--data", "EMPTY"]:
        (tmp_path / "empty.txt").write_text("")
        corpus, extra = tmp_path / "empty.txt", []
    before = _snapshot(run)
    assert _train("--config", config, "--data", corpus, "--out", run, "--overwrite", *extra) == 2
    assert re.search(message, _error(capsys))
    assert _snapshot(run) == before
    assert _hidden(tmp_path) == []


def test_an_exception_while_writing_the_new_run_leaves_the_old_one(run, config, corpus, tmp_path, capsys, monkeypatch):
    def disk_full(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_module, "atomic_write_json", disk_full)
    before = _snapshot(run)
    assert _train("--config", config, "--data", corpus, "--out", run, "--overwrite") == 2
    assert f"no space left on device writing {run} " in _error(capsys)
    assert _snapshot(run) == before
    assert _hidden(tmp_path) == []


def test_a_new_run_that_cannot_fit_writes_nothing(config, corpus, tmp_path, capsys):
    out = tmp_path / "huge"
    assert _train("--config", config, "--data", corpus, "--out", out, "--set", "model.n_layer=10000000") == 2
    assert re.search(r"needs about \d+\.\d TiB \(weights 580\.0 GiB, .*\) for 32,800,[\d,]+ parameters, but this "
                     r"machine has \d+\.\d GiB of memory", _error(capsys))
    assert not out.exists()


# --- --resume checks ------------------------------------------------------------------------------------------------


def test_resume_refuses_a_different_corpus_of_the_same_length(run, corpus, tmp_path, capsys):
    text = corpus.read_text()
    swapped = tmp_path / "swapped.txt"
    swapped.write_text(text[1] + text[0] + text[2:])  # the same characters and length, other content
    before = _snapshot(run)
    assert _train("--data", swapped, "--out", run, "--resume", "--set", "train.max_steps=9") == 2
    assert re.search(
        r"cannot resume: --data .*swapped.txt has the same length as the run's data \(.*corpus.txt\) but another "
        r"content \(fingerprint [0-9a-f]{12} vs [0-9a-f]{12}\); pass the same data",
        _error(capsys),
    )
    assert _snapshot(run) == before


def test_resume_refuses_a_corpus_prepared_with_permuted_ids(config, corpus, tmp_path, capsys):
    text = corpus.read_text()
    tokenizer = CharTokenizer.from_text(text)
    chars = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
    permuted = CharTokenizer({c: i for i, c in enumerate(reversed(chars))})  # the same vocabulary, ids reversed
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    prepare_corpus(tokenizer, [corpus], ours, progress=False)
    prepare_corpus(permuted, [corpus], theirs, progress=False)
    run = tmp_path / "run"
    assert _train("--config", config, "--data", ours, "--out", run) == 0
    capsys.readouterr()
    assert _train("--data", theirs, "--out", run, "--resume", "--set", "train.max_steps=9") == 2
    assert re.search(r"theirs was prepared with another tokenizer than the run being resumed \(its ids mean other "
                     r"text\)", _error(capsys))
    # the same ids, but the corpus's tokenizer/ swapped for the permuted one after preparation
    permuted.save(ours / "tokenizer")
    assert _train("--data", ours, "--out", run, "--resume", "--set", "train.max_steps=9") == 2
    assert re.search(r"ours/tokenizer is not the tokenizer that prepared .*ours \(its ids map to other text than "
                     r"meta.json records\); prepare the corpus again", _error(capsys))


def test_resume_refuses_max_steps_below_the_checkpoint(run, corpus, capsys):
    before = _snapshot(run)
    assert _train("--data", corpus, "--out", run, "--resume", "--set", "train.max_steps=3") == 2
    assert ("cannot resume: train.max_steps=3 is below the checkpoint's step 6; set train.max_steps to at least 6"
            in _error(capsys))
    assert _snapshot(run) == before


@NO_CUDA
def test_a_refused_device_on_resume_does_not_stick(run, corpus, capsys):
    before = _snapshot(run)
    assert _train("--data", corpus, "--out", run, "--resume", "--set", "train.device=cuda") == 2
    assert "train.device='cuda' but CUDA is not available here" in _error(capsys)
    assert _snapshot(run) == before  # run.json still says cpu
    assert _train("--data", corpus, "--out", run, "--resume", "--set", "train.max_steps=9") == 0
    assert load_checkpoint(run)["step"] == 9


def test_resume_removes_what_killed_writes_left(run, corpus, tmp_path):
    stale_file = run / "checkpoints" / f".last.pt.{DEAD_PID}.a1b2c3d4.tmp"
    stale_file.write_bytes(b"x" * 1000)
    stale_dir = tmp_path / f".run.tmp-{DEAD_PID}-0123abcd"
    stale_dir.mkdir()
    (stale_dir / "run.json").write_text("{}")
    live = run / "checkpoints" / f".last.pt.{os.getpid()}.a1b2c3d4.tmp"  # a live writer's file is not touched
    live.write_bytes(b"y")
    assert _train("--data", corpus, "--out", run, "--resume", "--set", "train.max_steps=7") == 0
    assert not stale_file.exists() and not stale_dir.exists() and live.exists()


# --- the config file itself -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"train": {"lr": 0.001, "lr": 3.0}}', r"tiny.json: duplicate key 'lr' in JSON"),
        ('{"model": ' + "[" * 5000 + "]" * 5000 + "}", r"tiny.json: JSON nested deeper than 64 levels"),
        ('{"train": {"lr": NaN}}', r"tiny.json: NaN is not valid JSON"),
    ],
)
def test_a_config_that_is_not_strict_json_is_refused(config, corpus, tmp_path, capsys, text, message):
    config.write_text(text)
    assert _train("--config", config, "--data", corpus, "--out", tmp_path / "run") == 2
    assert re.search(message, _error(capsys))
    assert not (tmp_path / "run").exists()


def test_warmup_longer_than_the_run_warns(config, corpus, tmp_path):
    with pytest.warns(UserWarning, match=r"train.warmup_steps \(100\) is greater than train.max_steps \(6\): the "
                      r"learning rate only reaches 6% of train.lr \(0.001\) and never decays"):
        assert _train("--config", config, "--data", corpus, "--out", tmp_path / "r", "--set",
                      "train.warmup_steps=100") == 0


def test_the_current_directory_is_never_swapped_out(config, corpus, tmp_path, capsys, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert _train("--config", config, "--data", corpus, "--out", ".") == 2
    assert "--out . is the current directory (or holds it); a run is written beside it and swapped in" in _error(
        capsys
    )
    assert list(here.iterdir()) == [] and _hidden(tmp_path) == []
