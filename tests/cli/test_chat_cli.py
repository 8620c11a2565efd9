"""`llm-lab data synth`, `llm-lab chat` and `llm-lab rl`: thin over the chat library, exact where it promises."""

from __future__ import annotations

import io
import json
import re

import pytest
from package_helpers import make_package

from llm_lab.cli import main
from llm_lab.core.chat import ChatTemplate, add_chat_tokens
from llm_lab.core.chat.reply import reply
from llm_lab.core.chat.tasks import make_task, read_task_file, synth_examples
from llm_lab.core.package.io import load_model_package
from llm_lab.core.tokenization import CharTokenizer
from llm_lab.core.train.metrics import read_metrics

ALPHABET = "0123456789 +?=Whatis.abcdefghijklmnopqrstuvwxyzS\n"


@pytest.fixture(scope="module")
def chat_package(tmp_path_factory):
    tokenizer = add_chat_tokens(CharTokenizer.from_text(ALPHABET))
    path, model = make_package(tmp_path_factory.mktemp("chat") / "pkg", tokenizer, context_length=64)
    return path, ChatTemplate(tokenizer), model


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_synth_writes_the_seeded_examples(capsys, tmp_path) -> None:
    out = tmp_path / "add.jsonl"
    code, stdout, _ = run_cli(capsys, "data", "synth", "addition", "--n", "5", "--seed", "3", "--set", "digits=4",
                              "--out", str(out))
    assert code == 0 and "5 addition examples written" in stdout
    assert read_task_file(out).examples == list(synth_examples(make_task("addition", digits=4), 5, 3))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["chess", "--n", "2"], r"unknown task 'chess'"),
        (["addition", "--n", "2", "--set", "digits"], r"--set 'digits': expected KEY=VALUE"),
        (["addition", "--n", "2", "--set", "digits=99"], r"digits must be an integer in \[1, 18\], got 99"),
        (["addition", "--n", "2", "--set", "foo=1"], r"task 'addition' has no setting 'foo'; its settings are: digits "
         r"\(default 3\)"),
    ],
)
def test_synth_bad_input_is_one_line(capsys, tmp_path, argv, message) -> None:
    code, _, err = run_cli(capsys, "data", "synth", *argv, "--out", str(tmp_path / "x.jsonl"))
    assert code == 2 and err.count("\n") == 1
    assert re.search(message, err)


def test_synth_replaces_only_its_own_files(capsys, tmp_path) -> None:
    mine = tmp_path / "notes.jsonl"
    mine.write_text("my own notes\n")
    code, _, err = run_cli(capsys, "data", "synth", "reverse", "--n", "2", "--out", str(mine), "--overwrite")
    assert code == 2 and "is not a task file written by llm-lab data synth; not replacing it" in err
    assert mine.read_text() == "my own notes\n"
    code, _, err = run_cli(capsys, "data", "synth", "reverse", "--n", "2", "--out", str(mine))
    assert code == 2 and "exists; pass --overwrite" in err
    ours = tmp_path / "ours.jsonl"
    assert run_cli(capsys, "data", "synth", "reverse", "--n", "2", "--out", str(ours))[0] == 0
    assert run_cli(capsys, "data", "synth", "reverse", "--n", "3", "--out", str(ours), "--overwrite")[0] == 0
    assert len(read_task_file(ours).examples) == 3


def test_chat_from_a_pipe_answers_each_line_like_the_library(capsys, monkeypatch, chat_package) -> None:
    path, template, model = chat_package
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2 + 3?\n\nWhat is 4 + 4?\n"))
    code, out, _ = run_cli(capsys, "chat", str(path), "--temperature", "0", "--max-new-tokens", "6",
                           "--system", "add")
    assert code == 0
    messages = [{"role": "system", "content": "add"}, {"role": "user", "content": "What is 2 + 3?"}]
    first = reply(model, template, messages, 6, temperature=0.0)
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "What is 4 + 4?"}]
    second = reply(model, template, messages, 6, temperature=0.0)
    assert out == f"{first}\n{second}\n"


def test_chat_refuses_a_model_without_chat_tokens(capsys, tmp_path, monkeypatch) -> None:
    path, _ = make_package(tmp_path / "base", CharTokenizer.from_text(ALPHABET))
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    code, _, err = run_cli(capsys, "chat", str(path))
    assert code == 2 and "is not a chat model: its tokenizer has no chat tokens" in err


def test_rl_runs_resumes_and_writes_a_package(capsys, tmp_path, chat_package) -> None:
    path, template, _ = chat_package
    out = tmp_path / "rl"
    sets = ["--set", "rl.task_settings={\"digits\": 1}", "--set", "rl.prompts_per_step=2", "--set",
            "rl.samples_per_prompt=2", "--set", "rl.max_new_tokens=3", "--set", "rl.eval_prompts=4",
            "--set", "rl.eval_interval=1"]
    code, stdout, _ = run_cli(capsys, "rl", "--init-from", str(path), "--out", str(out), "--set", "rl.max_steps=1",
                              *sets)
    assert code == 0, stdout
    assert [json.loads(line)["step"] for line in stdout.splitlines()[:-1]] == [0, 1]
    code, _, err = run_cli(capsys, "rl", "--init-from", str(path), "--out", str(out), *sets)
    assert code == 2 and "exists and is not empty; choose a new directory, or --resume" in err
    code, stdout, _ = run_cli(capsys, "rl", "--init-from", str(path), "--out", str(out), "--resume",
                              "--set", "rl.max_steps=2", *sets)
    assert code == 0
    assert [r["step"] for r in read_metrics(out / "metrics.csv")] == ["0", "1", "2"]
    _, tokenizer, _ = load_model_package(out / "package")
    assert tokenizer.special_tokens == template.tokenizer.special_tokens
    code, _, err = run_cli(capsys, "rl", "--init-from", str(path), "--out", str(tmp_path / "none"), "--resume")
    assert code == 2 and "holds no RL run" in err


def test_eval_task_file_scores_chat_and_base_models_like_the_library(capsys, tmp_path, chat_package) -> None:
    from llm_lab.core.chat.reply import score_task_file

    path, template, model = chat_package
    task_file = tmp_path / "heldout.jsonl"
    synth = ["data", "synth", "addition", "--n", "6", "--set", "digits=1", "--out", str(task_file)]
    assert run_cli(capsys, *synth)[0] == 0
    code, out, _ = run_cli(capsys, "eval", str(path), "--task-file", str(task_file), "--json")
    expected = score_task_file(model, template.tokenizer, task_file)
    assert code == 0 and json.loads(out)["right"] == expected.right and json.loads(out)["total"] == 6
    base, base_model = make_package(tmp_path / "base", CharTokenizer.from_text(ALPHABET))
    code, out, _ = run_cli(capsys, "eval", str(base), "--task-file", str(task_file), "--limit", "4")
    base_score = score_task_file(base_model, CharTokenizer.from_text(ALPHABET), task_file, limit=4)
    assert code == 0 and out.startswith(f"accuracy  {base_score.accuracy:.4f} ({base_score.right} of 4 right)")
    code, _, err = run_cli(capsys, "eval", str(path), "--task-file", str(task_file), "--max-tokens", "3")
    assert code == 2 and "--max-tokens does not apply to --task-file" in err
