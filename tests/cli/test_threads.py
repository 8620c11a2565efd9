"""The shared ``--threads`` option (llm_lab/cli/threads.py) on every command and script, and where its default
comes from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm_lab.cli import build_parser, main
from llm_lab.cli.threads import THREADS_ENV, threads_setting

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (REPO / "scripts").glob("*.py"))


def command_parsers(parser, path=()):
    """(command path, parser) for every runnable ``llm-lab`` command."""
    if parser.get_default("func") is not None:
        yield path, parser
    for name, child in parser.subcommands.items():
        yield from command_parsers(child, (*path, name))


def test_every_command_has_the_threads_option():
    commands = dict(command_parsers(build_parser()))
    assert {("train",), ("sample",), ("serve",), ("bench", "step"), ("experiment", "collect")} <= set(commands)
    for path, parser in commands.items():
        assert "--threads N|auto" in parser.format_help(), path


@pytest.mark.parametrize(
    ("flag", "environ", "expected"),
    [
        (None, {}, "auto"),
        (3, {THREADS_ENV: "1", "OMP_NUM_THREADS": "2"}, 3),  # the flag wins
        (None, {THREADS_ENV: "2", "OMP_NUM_THREADS": "1"}, 2),  # then LLM_LAB_THREADS
        (None, {THREADS_ENV: " auto "}, "auto"),
        (None, {THREADS_ENV: "", "OMP_NUM_THREADS": "1"}, None),  # then OMP_NUM_THREADS, which torch already read
    ],
)
def test_threads_setting_precedence(flag, environ, expected):
    assert threads_setting(flag, environ) == expected


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ValueError, match=r"LLM_LAB_THREADS: threads must be 'auto' or a positive integer, got 'x'"):
        threads_setting(None, {THREADS_ENV: "x"})


def test_commands_apply_the_flag_then_the_environment(tmp_path, monkeypatch, capsys):
    # `experiment collect` on an empty folder: the threads are set before the command fails on its input.
    monkeypatch.setenv(THREADS_ENV, "2")
    assert main(["experiment", "collect", str(tmp_path), "--threads", "1"]) == 2
    assert torch.get_num_threads() == 1
    assert main(["experiment", "collect", str(tmp_path)]) == 2
    assert torch.get_num_threads() == 2
    monkeypatch.setenv(THREADS_ENV, "many")
    assert main(["experiment", "collect", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "llm-lab: error: LLM_LAB_THREADS: threads must be 'auto' or a positive integer, got 'many'"
    )


def test_auto_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("llm_lab.utils.threads.measure_idle_cores", lambda cpus: 0.0)  # every core busy
    assert main(["experiment", "collect", str(tmp_path)]) == 2
    assert torch.get_num_threads() == 1


def test_bad_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "env", "--threads", "0"])
    assert exit_info.value.code == 2
    assert "argument --threads: threads must be 'auto' or a positive integer, got 0" in capsys.readouterr().err


def test_train_threads_flag_overrides_the_config_and_is_recorded(tmp_path, small_text):
    data = tmp_path / "corpus.txt"
    data.write_text(small_text, encoding="utf-8")
    config = tmp_path / "run.json"
    config.write_text(json.dumps({
        "model": {"context_length": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
        "train": {"batch_size": 2, "max_steps": 2, "eval_interval": 2, "eval_batches": 1, "warmup_steps": 0,
                  "device": "cpu", "threads": 2, "peak_flops": 1e9},
        "tokenizer": {"type": "char"},
    }))  # fmt: skip
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--data", str(data), "--out", str(out), "--quiet",
                 "--threads", "1"]) == 0  # fmt: skip
    assert json.loads((out / "run.json").read_text())["train"]["threads"] == 1
    runtime = json.loads((out / "runtime.json").read_text())
    assert runtime["threads"] == 1 and runtime["device"] == "cpu" and runtime["precision"] in ("fp32", "bf16")


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_threads_and_shows_its_own_name(script, monkeypatch, capsys):
    import runpy

    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "scripts" / script), run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {script} ") and "llm-lab" not in out.splitlines()[0]
    assert "--threads N|auto" in out


def test_broken_pipe_is_quiet_in_process(monkeypatch, capsys):
    from llm_lab.utils.errors import BROKEN_PIPE_EXIT, report_user_error

    assert report_user_error("llm-lab", BrokenPipeError(32, "Broken pipe")) == BROKEN_PIPE_EXIT == 141
    assert capsys.readouterr().err == ""
    assert report_user_error("llm-lab", OSError("disk full")) == 2  # other OS errors are still reported


@pytest.mark.slow
def test_sample_stream_into_head_exits_quietly(tmp_path):
    from package_helpers import char_tokenizer, make_package

    package, _ = make_package(tmp_path / "pkg", char_tokenizer())
    # 3000 new tokens: within the model's cap (100 windows of its 32-token context), and far more than head reads
    command = (
        f"{sys.executable} -m llm_lab sample {package} --prompt 'the ' --stream --max-new-tokens 3000 "
        "--temperature 0 --threads 1 | head -c 20"
    )
    result = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command}"], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert result.stdout.startswith("the ") and len(result.stdout) == 20
    assert result.stderr == ""
    assert result.returncode == 141  # 128 + SIGPIPE: what `yes | head` reports, and no message
