"""The character-training quickstart scripts (scripts/p1_train_char*.py): they run, and bad input is one line.

The scripts are loaded from their files (nothing in the package imports ``scripts/``) and their ``main(argv)`` is
called in-process with tiny settings, on self-made text so the tests run anywhere.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from llm_lab.core.data.download import corpus_candidates, default_corpus_path
from llm_lab.core.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
TEXT = "to be, or not to be: that is the question.\nwhether 'tis nobler in the mind to suffer.\n" * 60


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_default_corpus_path_puts_the_users_data_first(tmp_path):
    root, cwd = tmp_path / "checkout", tmp_path / "work"
    cwd.mkdir()
    mine = cwd / "data" / "tiny_shakespeare.txt"
    assert default_corpus_path(root, cwd=cwd) == mine  # nothing anywhere: where `llm-lab data download` puts it
    shared = tmp_path / "shared" / "data" / "tiny_shakespeare.txt"
    in_checkout = root / "data" / "tiny_shakespeare.txt"
    for path in (shared, in_checkout, mine):
        path.parent.mkdir(parents=True)
        path.write_text("x")
    assert corpus_candidates(root, cwd=cwd) == [mine, in_checkout, shared]
    assert default_corpus_path(root, cwd=cwd) == mine  # the user's own copy wins over the shared one
    mine.unlink()
    assert default_corpus_path(root, cwd=cwd) == in_checkout
    in_checkout.unlink()
    assert default_corpus_path(root, cwd=cwd) == shared
    assert corpus_candidates(root, cwd=root) == [in_checkout, shared]  # run from the checkout: one data/ folder
    with pytest.raises(ValueError, match="unknown dataset 'nope'; known: tiny_shakespeare"):
        default_corpus_path(root, "nope")


def test_real_recipe_script_reads_the_users_data_first(tmp_path, monkeypatch):
    script = load_script("p1_train_char_real")
    mine = tmp_path / "data" / "tiny_shakespeare.txt"
    mine.parent.mkdir()
    mine.write_text(TEXT, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    commands: list[list[str]] = []
    monkeypatch.setattr(script, "llm_lab_main", lambda argv: commands.append(argv) or 0)
    assert script.main(["--threads", "1"]) == 0
    (command,) = commands
    assert command[:3] == ["train", "--data", str(mine)]
    assert command[-2:] == ["--threads", "1"]  # passed on to llm-lab train


def test_real_recipe_help_names_its_default_corpus():
    text = load_script("p1_train_char_real").build_parser().format_help()
    assert "see above" not in text and "data/tiny_shakespeare.txt" in " ".join(text.split())


def test_hello_world_trains_and_keeps_the_run(tmp_path, capsys):
    main = load_script("p1_train_char").main
    out = tmp_path / "run"
    argv = ["--out", str(out), "--max-steps", "4", "--eval-interval", "2", "--sample-tokens", "5", "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "validation loss" in printed and "after 4 steps" in printed and "sample:\nThe " in printed
    assert json.loads((out / "run.json").read_text())["train"]["max_steps"] == 4
    assert (out / "checkpoints" / "last.pt").is_file()
    # The run is there now: a second call refuses it (one line, exit 2) unless --overwrite.
    assert main(argv) == 2
    assert "p1_train_char: error:" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-steps", "0"], "max_steps must be a positive integer, got 0"),
        (["--n-head", "3"], "n_embd"),
        (["--device", "tpu"], "device='tpu' is not supported"),
    ],
)
def test_hello_world_bad_flags_are_one_line(argv, message, capsys):
    assert load_script("p1_train_char").main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("p1_train_char: error:") and message in err and "Traceback" not in err


def test_real_recipe_script_runs_llm_lab_train_with_its_defaults(corpus, tmp_path, capsys):
    main = load_script("p1_train_char_real").main
    out = tmp_path / "run"
    small = ["--set", "train.max_steps=3", "--set", "train.eval_interval=3", "--set", "train.eval_batches=1",
             "--set", "model.context_length=16", "--set", "train.device=cpu"]  # fmt: skip
    assert main(["--data", str(corpus), "--out", str(out), *small]) == 0
    run = json.loads((out / "run.json").read_text())
    standard = json.loads((REPO / "configs" / "shakespeare_char.json").read_text())
    assert run["model"]["n_layer"] == standard["model"]["n_layer"]  # the standard config, with the overrides
    assert run["train"]["max_steps"] == 3
    # --resume continues from the run's own run.json (its overrides kept), here extended by one step.
    assert main(["--data", str(corpus), "--out", str(out), "--resume", "--set", "train.max_steps=4"]) == 0
    assert json.loads((out / "run.json").read_text())["train"]["max_steps"] == 4
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 4


def test_real_recipe_script_without_data_names_the_download(tmp_path, capsys):
    assert load_script("p1_train_char_real").main(["--data", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert "missing.txt not found; fetch it with `llm-lab data download tiny_shakespeare" in err


def test_sanity_check_passes_on_learnable_text(corpus, capsys):
    main = load_script("p1_train_char_sanity_check").main
    assert main(["--data", str(corpus), "--max-steps", "30", "--device", "cpu"]) == 0
    assert "sanity check passed" in capsys.readouterr().out


def test_sanity_check_fails_when_the_loss_cannot_fall_enough(corpus, capsys):
    # An impossible required drop: the check must report a failure (exit 1), not pass regardless.
    assert load_script("p1_train_char_sanity_check").main(["--data", str(corpus), "--max-steps", "2",
                                                           "--min-drop", "100"]) == 1  # fmt: skip
    assert "sanity check FAILED: the loss fell by less than 100" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("write", "argv", "message"),
    [
        (None, ["--max-steps", "0"], "max_steps must be a positive integer, got 0"),
        (b"\xff\xfe not text", [], "is not UTF-8 text (invalid start byte at byte 0)"),
        (None, ["--chars", "10"], "corpus"),
    ],
)
def test_sanity_check_bad_input_is_one_line(corpus, write, argv, message, capsys):
    if write is not None:
        corpus.write_bytes(write)
    assert load_script("p1_train_char_sanity_check").main(["--data", str(corpus), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("p1_train_char_sanity_check: error:") and message in err
