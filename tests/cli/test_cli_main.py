"""The `llm-lab` entry point itself: user mistakes and file-system refusals are one line and exit code 2."""

from __future__ import annotations

import pytest

import llm_lab.cli
from llm_lab.cli import main


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: llm-lab" in capsys.readouterr().out


def test_an_os_error_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(llm_lab.cli, "_COMMAND_MODULES", ("data",))
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world\n" * 20)
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    code = main(["data", "prepare", "--tokenizer", "char", "--input", str(corpus), "--out", str(blocker / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("llm-lab: error: ") and "Not a directory" in err and len(err.splitlines()) == 1


def test_a_warning_is_one_line_without_path_or_category(capsys, monkeypatch):
    import argparse
    import sys
    import warnings

    parser = argparse.ArgumentParser(prog="llm-lab")
    parser.add_argument("--threads", default=1)

    def command(_args):
        warnings.warn("something to know:\n  on two lines", UserWarning, stacklevel=1)
        return 0

    parser.set_defaults(func=command)
    monkeypatch.setattr(llm_lab.cli, "build_parser", lambda: parser)
    before = warnings.formatwarning

    def display(message, category, filename, lineno, file=None, line=None):  # Python's own, which pytest replaces
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", display)
        assert main([]) == 0
    assert capsys.readouterr().err == "llm-lab: warning: something to know: on two lines\n"
    assert warnings.formatwarning is before  # the process's own format is back after the command
    with pytest.warns(UserWarning, match="something to know"):  # and whoever records warnings still gets them
        assert main([]) == 0


# A subprocess that sends itself SIGINT (or SIGTERM) at a chosen point of the start-up: while the subcommands are
# imported, or while --threads imports torch. Deterministic: the signal is sent from inside the step it must stop.
INTERRUPT_AT = """
import importlib, os, signal, sys, time
import llm_lab.cli as cli

def interrupt():
    os.kill(os.getpid(), getattr(signal, sys.argv[2] if len(sys.argv) > 2 else "SIGINT"))
    time.sleep(5)  # the handler ends the process long before this returns

where = sys.argv[1]
if where == "imports":
    real = importlib.import_module
    def import_module(name, *args):
        if name == "llm_lab.cli.train":
            interrupt()
        return real(name, *args)
    importlib.import_module = import_module
else:
    cli.apply_threads_option = lambda flag: interrupt()
sys.exit(cli.main(["bench", "env"]))
"""


@pytest.mark.parametrize("where", ["imports", "threads"])
def test_ctrl_c_while_starting_is_one_line_not_a_traceback(where):
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", INTERRUPT_AT, where], capture_output=True, text=True, timeout=120,
                            env={**os.environ})  # fmt: skip
    assert (result.returncode, result.stderr) == (130, "llm-lab: interrupted\n")


@pytest.mark.parametrize("where", ["imports", "threads"])
def test_sigterm_while_starting_is_the_clean_stop_not_a_death_by_signal(where):
    """SIGTERM in the first second (the imports) ended the process with -15 and no word; now the same line and exit
    code 143 as a SIGTERM later on."""
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", INTERRUPT_AT, where, "SIGTERM"], capture_output=True, text=True,
                            timeout=120, env={**os.environ})  # fmt: skip
    assert (result.returncode, result.stderr) == (143, "llm-lab: terminated (SIGTERM)\n")


def test_a_real_commands_warning_is_one_line(tmp_path):
    """End to end: `llm-lab train` with a warm-up longer than the run warns, as one line on stderr."""
    import json
    import os
    import subprocess
    import sys

    (tmp_path / "text.txt").write_text("to be, or not to be: that is the question.\n" * 100)
    config = {"model": {"context_length": 16, "n_layer": 1, "n_head": 1, "n_embd": 16},
              "train": {"batch_size": 2, "max_steps": 2, "warmup_steps": 100, "eval_interval": 2, "eval_batches": 1,
                        "device": "cpu", "precision": "fp32"}, "tokenizer": {"type": "char"}}  # fmt: skip
    (tmp_path / "run.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "llm_lab", "train", "--config", str(tmp_path / "run.json"), "--data",
               str(tmp_path / "text.txt"), "--out", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "llm-lab: warning: train.warmup_steps (100) is greater than train.max_steps (2): the learning rate only "
        "reaches 2% of train.lr (0.001) and never decays; lower train.warmup_steps"
    ]
