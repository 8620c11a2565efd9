"""`llm-lab train`: the run directory, resume, overwrite, fine-tuning and every bad-input path (in-process through
llm_lab.cli.main), plus real subprocesses for the console entry point."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import _error, _snapshot, _train

import llm_lab.cli
from llm_lab.cli import main
from llm_lab.core.data.prepare import prepare_corpus
from llm_lab.core.tokenization import CharTokenizer, load_tokenizer
from llm_lab.core.train import load_checkpoint
from llm_lab.core.train.metrics import METRICS_COLUMNS, read_metrics

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


@pytest.fixture(autouse=True)
def _only_train(monkeypatch):
    """The real `llm-lab` parser with the `train` group alone, so other groups' imports cannot interfere."""
    monkeypatch.setattr(llm_lab.cli, "_COMMAND_MODULES", ("train",))


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture
def corpus(tmp_path, small_text) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(small_text)
    return path


def test_train_writes_the_run_directory(config, corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train("--config", config, "--data", corpus, "--out", run) == 0
    assert "done: step 6" in capsys.readouterr().out
    run_json = json.loads((run / "run.json").read_text())
    assert {"model", "train", "tokenizer", "data"} <= set(run_json)
    tokenizer = load_tokenizer(run / "tokenizer")
    assert run_json["model"]["vocab_size"] == tokenizer.vocab_size == len(set(corpus.read_text()))
    assert run_json["data_source"]["format"] == "text"
    n_tokens = len(corpus.read_text())
    assert run_json["data_source"]["val_tokens"] == n_tokens // 10  # the last 10% is validation
    rows = read_metrics(run / "metrics.csv")
    assert tuple(rows[0]) == METRICS_COLUMNS and [r["step"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    last = load_checkpoint(run / "checkpoints" / "last.pt", training_state=True)
    assert last["step"] == 6 and last["model_config"] == run_json["model"]
    assert (run / "checkpoints" / "best_val.pt").is_file()


def test_set_overrides_and_a_prepared_directory(config, corpus, tmp_path):
    prepared = tmp_path / "prepared"
    prepare_corpus(CharTokenizer.from_text(corpus.read_text()), [corpus], prepared, progress=False)
    run = tmp_path / "run"
    assert _train("--config", config, "--data", prepared, "--out", run, "--set", "train.max_steps=4") == 0
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["train"]["max_steps"] == 4 and run_json["data_source"]["format"] == "prepared"
    assert load_checkpoint(run)["step"] == 4


def test_bpe_tokenizer_section(config, corpus, tmp_path):
    run = tmp_path / "run"
    assert _train("--config", config, "--data", corpus, "--out", run, "--set", "tokenizer.type=bpe",
                  "--set", "tokenizer.vocab_size=300", "--set", "train.max_steps=3") == 0  # fmt: skip
    tokenizer = load_tokenizer(run / "tokenizer")
    assert json.loads((run / "run.json").read_text())["model"]["vocab_size"] == tokenizer.vocab_size <= 300


@pytest.mark.parametrize(
    ("text", "extra", "message"),
    [
        ("", [], r"corpus.txt is empty; give a text file with at least context_length \+ 1 = 17 tokens"),
        ("abcdefghij", [], r"the training split has 9 tokens, fewer than one window of context_length \+ 1 = 17"),
        (
            "abcdefghij" * 10,
            [],
            r"the validation split has 10 tokens, fewer than one window .* raise data.val_fraction",
        ),
        ("abc" * 100, ["--set", "train.max_step=3"], r"unknown key 'max_step'; valid keys for train: batch_size"),
        ("abc" * 100, ["--set", "model.n_layer=two"], r"n_layer: expected an integer, got 'two'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(config, tmp_path, capsys, text, extra, message):
    data = tmp_path / "corpus.txt"
    data.write_text(text)
    run = tmp_path / "run"
    assert _train("--config", config, "--data", data, "--out", run, *extra) == 2
    err = _error(capsys)
    assert err.startswith("llm-lab: error: ")
    assert re.search(message, err), err
    assert not run.exists()  # nothing written for a run that could not start


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_a_bad_sample_length_is_refused_before_training(config, corpus, tmp_path, capsys, value):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(config), "--data", str(corpus), "--out", str(run), "--sample-tokens", value])
    assert exc.value.code == 2
    assert "argument --sample-tokens: expected a positive integer" in capsys.readouterr().err
    assert not run.exists()  # no step was trained for a sample that could not be drawn


def test_config_from_another_version_and_missing_data(tmp_path, corpus, capsys):
    future = tmp_path / "future.json"
    future.write_text(json.dumps(TINY | {"format_version": 2}))
    assert _train("--config", future, "--data", corpus, "--out", tmp_path / "run") == 2
    assert "format_version 2 is from another version of llm-lab; this one reads format_version 1" in _error(capsys)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps(TINY | {"optimiser": {}}))
    assert _train("--config", unknown, "--data", corpus, "--out", tmp_path / "run") == 2
    assert "unknown section 'optimiser'; valid sections are: model, train, tokenizer, data" in _error(capsys)
    assert _train("--config", future, "--data", tmp_path / "nope.txt", "--out", tmp_path / "run") == 2
    _error(capsys)


def test_an_out_dir_holding_a_run_is_refused_and_left_untouched(config, corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train("--config", config, "--data", corpus, "--out", run) == 0
    before = _snapshot(run)
    capsys.readouterr()
    assert _train("--config", config, "--data", corpus, "--out", run, "--set", "train.lr=0.01") == 2
    assert "already holds a run (run.json); pass --resume to continue it or --overwrite to replace it" in _error(capsys)
    assert _snapshot(run) == before
    # --overwrite replaces it
    assert _train("--config", config, "--data", corpus, "--out", run, "--overwrite", "--set", "train.max_steps=3") == 0
    assert [r["step"] for r in read_metrics(run / "metrics.csv")] == ["1", "2", "3"]
    # ... saying where the new run's files are until it is swapped in (metrics.csv is not in RUN_DIR until then)
    staged = re.search(r"^until its first checkpoint the new run is written to (\S+) \(metrics\.csv there\), then it "
                       rf"replaces {re.escape(str(run))}$", capsys.readouterr().out, re.MULTILINE)  # fmt: skip
    assert staged and re.fullmatch(rf"\.run\.tmp-{os.getpid()}-[0-9a-f]{{8}}", Path(staged[1]).name)
    assert Path(staged[1]).parent == run.parent and not Path(staged[1]).exists()
    # a directory with other content is never a run to overwrite
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert _train("--config", config, "--data", corpus, "--out", other, "--overwrite") == 2
    assert "is not empty and holds no llm-lab run" in _error(capsys)
    assert (other / "notes.txt").read_text() == "mine"


def test_resume_continues_and_extends(config, corpus, tmp_path):
    run = tmp_path / "run"
    assert _train("--config", config, "--data", corpus, "--out", run) == 0
    assert _train("--config", config, "--data", corpus, "--out", run, "--resume", "--set", "train.max_steps=9") == 0
    assert [int(r["step"]) for r in read_metrics(run / "metrics.csv")] == list(range(1, 10))
    assert load_checkpoint(run)["step"] == 9
    assert json.loads((run / "run.json").read_text())["train"]["max_steps"] == 9
    # without --config the run's own run.json is used
    assert _train("--data", corpus, "--out", run, "--resume", "--set", "train.max_steps=12") == 0
    assert load_checkpoint(run)["step"] == 12


def test_derived_head_values_stay_derived_in_the_run_and_resume_compares_the_built_model(
    config, corpus, tmp_path, capsys
):
    run = tmp_path / "run"
    assert _train("--config", config, "--data", corpus, "--out", run) == 0
    saved = json.loads((run / "run.json").read_text())["model"]
    assert (saved["n_kv_head"], saved["attention_type"]) == (None, None)  # derived, not frozen at n_head
    assert load_checkpoint(run)["model_config"]["n_kv_head"] is None
    # A config that names the same head values spells the same model: resuming with it is accepted.
    n_head = saved["n_head"]
    named = tmp_path / "named.json"
    named.write_text(json.dumps({**TINY, "model": {**TINY["model"], "n_kv_head": n_head, "attention_type": "mha"}}))
    assert _train("--config", named, "--data", corpus, "--out", run, "--resume", "--set", "train.max_steps=7") == 0
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**TINY, "model": {**TINY["model"], "n_kv_head": 1}}))
    assert _train("--config", other, "--data", corpus, "--out", run, "--resume", "--set", "train.max_steps=8") == 2
    err = _error(capsys)
    assert "differs from the run in" in err and "(model.attention_type, model.n_kv_head)" in err


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", r"last.pt: cannot read the checkpoint \(truncated, corrupted or not a PyTorch file\)"),
        ("foreign", r"last.pt: not an llm-lab training checkpoint \(no format_version\)"),
        ("future", r"last.pt: checkpoint format_version 7 is not supported; this llm-lab reads version 1"),
        ("missing", r"cannot resume: .*last.pt does not exist"),
    ],
)
def test_bad_checkpoint_on_resume(config, corpus, tmp_path, capsys, damage, message):
    run = tmp_path / "run"
    assert _train("--config", config, "--data", corpus, "--out", run) == 0
    last = run / "checkpoints" / "last.pt"
    if damage == "truncate":
        last.write_bytes(last.read_bytes()[:1000])
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(2)}, last)
    elif damage == "future":
        torch.save(load_checkpoint(last) | {"format_version": 7}, last)
    else:
        last.unlink()
    before = _snapshot(run)
    capsys.readouterr()
    assert _train("--config", config, "--data", corpus, "--out", run, "--resume") == 2
    assert re.search(message, _error(capsys))
    assert _snapshot(run) == before


def test_resume_under_another_attention_kernel(corpus, tmp_path):
    """A run saved with attn_impl "sdpa" (the default before "auto") resumes with a config that says "auto": the
    kernel is an execution choice, the same weights give the same values. The run keeps its own choice."""
    old = tmp_path / "old.json"
    old.write_text(json.dumps(TINY | {"model": TINY["model"] | {"attn_impl": "sdpa"}}))
    run = tmp_path / "run"
    assert _train("--config", old, "--data", corpus, "--out", run) == 0
    new = tmp_path / "new.json"
    new.write_text(json.dumps(TINY | {"model": TINY["model"] | {"attn_impl": "auto"}}))
    assert _train("--config", new, "--data", corpus, "--out", run, "--resume", "--set", "train.max_steps=7") == 0
    assert json.loads((run / "run.json").read_text())["model"]["attn_impl"] == "sdpa"


def test_resume_with_another_config_or_nothing_to_resume(config, corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train("--config", config, "--data", corpus, "--out", tmp_path / "empty", "--resume") == 2
    err = _error(capsys)
    assert "cannot resume" in err and "holds no run (no run.json)" in err
    assert _train("--config", config, "--data", corpus, "--out", run) == 0
    other = tmp_path / "other.json"
    other.write_text(json.dumps(TINY | {"model": TINY["model"] | {"n_layer": 2}}))
    capsys.readouterr()
    assert _train("--config", other, "--data", corpus, "--out", run, "--resume") == 2
    assert "differs from the run in" in _error(capsys)
    shorter = tmp_path / "shorter.txt"
    shorter.write_text(corpus.read_text()[:2000])
    assert _train("--config", config, "--data", shorter, "--out", run, "--resume") == 2
    assert re.search(
        r"cannot resume: --data .*shorter.txt gives train_tokens=\d+ but the run was trained on", _error(capsys)
    )


def test_init_from_a_run_fine_tunes_its_weights(config, corpus, tmp_path, capsys):
    source = tmp_path / "source"
    assert _train("--config", config, "--data", corpus, "--out", source) == 0
    tuned = tmp_path / "tuned"
    # A vanishing learning rate leaves the weights where they started: the source's best checkpoint.
    args = ["--set", "train.lr=1e-12", "--set", "train.min_lr=0", "--set", "train.max_steps=3"]
    assert _train("--config", config, "--data", corpus, "--out", tuned, "--init-from", source, *args) == 0
    start = load_checkpoint(source / "checkpoints" / "best_val.pt")["model"]
    end = load_checkpoint(tuned)["model"]
    for key, value in start.items():
        torch.testing.assert_close(end[key], value, rtol=0, atol=1e-8, msg=key)
    assert json.loads((tuned / "run.json").read_text())["init_from"] == str(source)
    assert load_tokenizer(tuned / "tokenizer").vocab_size == load_tokenizer(source / "tokenizer").vocab_size
    capsys.readouterr()
    assert _train("--config", config, "--data", corpus, "--out", source, "--resume", "--init-from", source) == 2
    assert "cannot be combined with --resume" in _error(capsys)
    # ids prepared with another tokenizer would mean other characters to the fine-tuned model
    other_text = tmp_path / "other.txt"
    other_text.write_text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\n" * 100)
    prepared = tmp_path / "prepared"
    prepare_corpus(CharTokenizer.from_text(other_text.read_text()), [other_text], prepared, progress=False)
    assert _train("--config", config, "--data", prepared, "--out", tmp_path / "t2", "--init-from", source) == 2
    assert "was prepared with another tokenizer than --init-from" in _error(capsys)


def test_init_from_a_package(config, corpus, tmp_path):
    from llm_lab.core.package.io import package_run

    source = tmp_path / "source"
    assert _train("--config", config, "--data", corpus, "--out", source) == 0
    package = package_run(source, tmp_path / "package")
    tuned = tmp_path / "tuned"
    args = ["--set", "train.lr=1e-12", "--set", "train.min_lr=0", "--set", "train.max_steps=3"]
    assert _train("--config", config, "--data", corpus, "--out", tuned, "--init-from", package, *args) == 0
    start = load_checkpoint(source / "checkpoints" / "best_val.pt")["model"]
    end = load_checkpoint(tuned)["model"]
    for key, value in start.items():
        torch.testing.assert_close(end[key], value, rtol=0, atol=1e-8, msg=key)


def test_init_from_refuses_a_set_that_contradicts_the_weights(config, corpus, tmp_path, capsys):
    source = tmp_path / "source"
    assert _train("--config", config, "--data", corpus, "--out", source) == 0
    capsys.readouterr()
    tuned = tmp_path / "tuned"
    assert _train("--config", config, "--data", corpus, "--out", tuned, "--init-from", source,
                  "--set", "model.n_embd=64") == 2  # fmt: skip
    assert "model.n_embd=64 (the weights have 16) contradicts the weights" in _error(capsys)
    assert not tuned.exists()
    assert _train("--config", config, "--data", corpus, "--out", tuned, "--init-from", source,
                  "--set", "model.dropout=0.2", "--set", "train.max_steps=2") == 0  # fmt: skip
    assert json.loads((tuned / "run.json").read_text())["model"]["dropout"] == 0.2


def test_non_finite_loss_stops_with_the_step(config, corpus, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--set", "train.lr=10000", "--set", "train.min_lr=10000", "--set", "train.warmup_steps=0"]
    assert _train("--config", config, "--data", corpus, "--out", run, *args) == 2
    assert "became nan at step 2; training stopped, no checkpoint was written" in _error(capsys)
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())


def _subprocess(*args, cwd):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "llm_lab", "train", *map(str, args), "--quiet"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_console_entry_point_in_a_subprocess(config, corpus, tmp_path):
    run = tmp_path / "run"
    ok = _subprocess("--config", config, "--data", corpus, "--out", run, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "done: step 6" in ok.stdout and load_checkpoint(run)["step"] == 6


def test_package_at_the_end_of_a_run(config, corpus, tmp_path, capsys):
    from llm_lab.core.package.io import load_model_package

    run, package = tmp_path / "run", tmp_path / "pkg"
    assert _train("--config", config, "--data", corpus, "--out", run, "--package", package) == 0
    assert f"package: {package}" in capsys.readouterr().out
    cfg, tok, model = load_model_package(package)
    best = load_checkpoint(run / "checkpoints" / "best_val.pt")
    assert cfg.vocab_size == tok.vocab_size
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, best["model"][name]), name
    # An existing package is refused before any training, and the run directory is not touched.
    before = _snapshot(run)
    assert _train("--config", config, "--data", corpus, "--out", tmp_path / "run2", "--package", package) == 2
    err = _error(capsys)
    assert "--package" in err and "already exists" in err
    assert not (tmp_path / "run2").exists() and _snapshot(run) == before


@pytest.mark.parametrize("kind", ["folder", "link", "file"])
def test_a_package_destination_not_ours_is_refused_before_training(config, corpus, tmp_path, capsys, kind):
    """--package --overwrite replaces only an llm-lab package: anything else is refused before a step is trained
    (it was refused only after the whole run), and the run directory is not even created."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    target = {"folder": mine, "link": tmp_path / "link", "file": mine / "notes.txt"}[kind]
    if kind == "link":
        target.symlink_to(mine)
    args = ("--config", config, "--data", corpus, "--out", tmp_path / "run", "--package", target, "--overwrite")
    assert _train(*args) == 2
    err = _error(capsys)
    assert {
        "folder": "is not an llm-lab package; refusing to replace it (it holds notes.txt and no package.json)",
        "link": "is a symbolic link",
        "file": "exists and is a file; a package is a directory",
    }[kind] in err, err
    assert not (tmp_path / "run").exists() and (mine / "notes.txt").read_text() == "mine"
