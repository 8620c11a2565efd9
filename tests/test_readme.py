"""Run the README's code blocks, so the README cannot rot.

Every ```` ```python ```` block runs as a script and every ```` ```bash ```` command runs through ``bash``, in README
order, in one scratch directory (``cwd``), so a block can use what an earlier one made (``artifacts/p2_bpe``).
Nothing is written into the repository. The scratch directory gets:

* ``configs/`` (a copy) and ``scripts/`` (a link), which the README's commands name by relative path;
* ``data/tiny_shakespeare.txt``: the real corpus when it is available here, else a self-made text (then the
  ``llm-lab data download`` lines, which check the real file's sha256, are skipped);
* ``HOME`` pointing inside it, with ``~/Downloads/input.txt`` for the offline download example.

The mechanism that keeps it quick, documented here and in an HTML comment in the README:

* ``SKIP``: lines that set up the environment this test already runs in (``make``, ``pip install``, creating
  or activating a virtualenv). Nothing else is skipped, except commands that need hardware that is absent
  (``NEEDS_CUDA``).
* ``REDUCE``: long training commands run with extra arguments appended (fewer steps); argparse keeps the last
  value of a repeated flag, so the README's own values are overridden and everything else is exercised as written.
* ``BACKGROUND``: ``llm-lab serve`` starts in the background on a free port (the README's port is rewritten in
  the blocks that follow), and is stopped at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

SKIP = re.compile(r"^(make\b|pip install\b|python3? -m venv\b|source\b|\S*activate\b)")
NEEDS_CUDA = re.compile(r"(device[= ]cuda|--device cuda|nproc_per_node=\d+.*cuda)")
REDUCE: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"^python scripts/p2_train_bpe\.py\b"),
        "--max-steps 6 --eval-interval 3 --eval-batches 2 --sample-tokens 5",
    ),
    (re.compile(r"^python scripts/p1_train_char\.py\b"), "--max-steps 6 --eval-interval 3 --sample-tokens 5"),
    (
        re.compile(r"^(torchrun .*-m llm_lab|llm-lab|python -m llm_lab) train\b"),
        "--set train.max_steps=4 --set train.eval_interval=2 --set train.eval_batches=2 --quiet",
    ),
]
BACKGROUND = re.compile(r"^llm-lab serve\b")
COMMAND_TIMEOUT_S = 600


@dataclass
class Block:
    lang: str
    code: str
    line: int  # line of the opening fence in README.md


def readme_blocks(text: str) -> list[Block]:
    blocks = []
    for m in re.finditer(r"^```(bash|python)[ \t]*\n(.*?)^```", text, re.S | re.M):
        blocks.append(Block(m.group(1), m.group(2), text[: m.start()].count("\n") + 1))
    return blocks


def strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` outside quotes that starts a word)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def bash_commands(code: str) -> list[str]:
    """Logical command lines: continuations joined, comments and blank lines dropped."""
    commands, current = [], ""
    for raw in code.splitlines():
        line = strip_comment(raw) if not current else raw.rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        line = current + line
        current = ""
        line = strip_comment(line).strip()
        if line:
            commands.append(line)
    return commands


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_made_corpus() -> str:
    speakers = ["ROMEO", "JULIET", "KING HENRY", "FIRST CITIZEN"]
    lines = [
        "to be, or not to be: that is the question.",
        "the quick brown fox jumps over the lazy dog, and the dog sleeps on.",
        "all that glitters is not gold; all who wander are not lost.",
        "what light through yonder window breaks? it is the east.",
    ]
    parts = [f"{speakers[i % 4]}:\n{lines[i % 4]}\n{lines[(i + 1) % 4]}\n\n" for i in range(1500)]
    return "".join(parts)


class Runner:
    def __init__(self, work: Path, real_corpus: bool) -> None:
        self.work = work
        self.real_corpus = real_corpus
        self.port_map: dict[str, str] = {}
        self.background: list[subprocess.Popen] = []
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.seconds: dict[str, float] = {}  # per command, printed with -s to see what the test spends time on
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "HOME": str(work / "home"),
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }

    def rewrite_ports(self, code: str) -> str:
        for old, new in self.port_map.items():
            code = code.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}").replace(f"--port {old}", f"--port {new}")
        return code

    def fail(self, block: Block, what: str, proc: subprocess.CompletedProcess) -> None:
        pytest.fail(
            f"README.md line {block.line}: {what} exited with {proc.returncode}\n"
            f"--- stdout (tail) ---\n{proc.stdout[-3000:]}\n--- stderr (tail) ---\n{proc.stderr[-3000:]}"
        )

    def run_python(self, block: Block) -> None:
        script = self.work / f"_readme_block_{block.line}.py"
        script.write_text(self.rewrite_ports(block.code))
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, script.name],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        if proc.returncode != 0:
            self.fail(block, "the python block", proc)
        self.ran.append(f"python block at line {block.line}")
        self.seconds[self.ran[-1]] = time.perf_counter() - start

    def start_background(self, block: Block, command: str) -> None:
        match = re.search(r"--port (\d+)", command)
        port = str(free_port())
        if match:
            self.port_map[match.group(1)] = port
            command = command.replace(match.group(0), f"--port {port}")
        else:
            self.port_map["8000"] = port
            command += f" --port {port}"
        proc = subprocess.Popen(
            ["bash", "-c", command],
            cwd=self.work,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.background.append(proc)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"README.md line {block.line}: `{command}` exited early:\n{proc.stderr.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"README.md line {block.line}: `{command}` did not answer within 120 s")
        self.ran.append(f"(background) {command}")

    def run_bash(self, block: Block) -> None:
        for command in bash_commands(self.rewrite_ports(block.code)):
            if SKIP.match(command):
                self.skipped.append(command)
                continue
            if NEEDS_CUDA.search(command) and not torch.cuda.is_available():
                self.skipped.append(f"{command}   (needs CUDA)")
                continue
            if command.startswith("llm-lab data download") and not self.real_corpus:
                self.skipped.append(f"{command}   (checks the real corpus's sha256; a self-made text is used here)")
                continue
            if command.startswith("curl") and shutil.which("curl") is None:
                self.skipped.append(f"{command}   (curl is not installed)")
                continue
            if BACKGROUND.match(command):
                self.start_background(block, command)
                continue
            for pattern, extra in REDUCE:
                if pattern.search(command):
                    command = f"{command} {extra}"
                    break
            start = time.perf_counter()
            proc = subprocess.run(
                ["bash", "-c", command],
                cwd=self.work,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
            )
            if proc.returncode != 0:
                self.fail(block, f"`{command}`", proc)
            self.ran.append(command)
            self.seconds[command] = time.perf_counter() - start

    def close(self) -> None:
        for proc in self.background:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait()


def test_parsing_helpers():
    assert strip_comment('llm-lab sample x --prompt "a # b"  # comment') == 'llm-lab sample x --prompt "a # b"'
    assert strip_comment("echo a#b") == "echo a#b"
    code = "a \\\n  --b 1  # note\n# only a comment\n\nc $'\\n\\n'  # blank\n"
    assert bash_commands(code) == ["a    --b 1", "c $'\\n\\n'"]
    blocks = readme_blocks("x\n```bash\nls\n```\n```text\nno\n```\n```python\nprint(1)\n```\n")
    assert [(b.lang, b.code, b.line) for b in blocks] == [("bash", "ls\n", 2), ("python", "print(1)\n", 8)]


@pytest.mark.slow
def test_readme_code_blocks_run(tmp_path, shakespeare_path):
    text = README.read_text(encoding="utf-8")
    blocks = readme_blocks(text)
    assert len(blocks) >= 10, "the README should show its commands in ```bash and ```python blocks"

    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "home" / "Downloads").mkdir(parents=True)
    shutil.copytree(REPO / "configs", work / "configs")
    (work / "scripts").symlink_to(REPO / "scripts", target_is_directory=True)
    corpus = work / "data" / "tiny_shakespeare.txt"
    if shakespeare_path is not None:
        shutil.copyfile(shakespeare_path, corpus)
    else:
        corpus.write_text(self_made_corpus(), encoding="utf-8")
    shutil.copyfile(corpus, work / "home" / "Downloads" / "input.txt")

    runner = Runner(work, real_corpus=shakespeare_path is not None)
    try:
        for block in blocks:
            if block.lang == "python":
                runner.run_python(block)
            else:
                runner.run_bash(block)
    finally:
        runner.close()
        for what, seconds in sorted(runner.seconds.items(), key=lambda kv: -kv[1])[:8]:
            print(f"{seconds:6.1f} s  {what}")
        for what in runner.skipped:
            print(f"skipped: {what}")
    # Only environment set-up (and hardware this machine lacks) may be skipped.
    for skipped in runner.skipped:
        assert SKIP.match(skipped) or "(needs CUDA)" in skipped or "self-made text" in skipped or "curl" in skipped
    assert len(runner.ran) >= 20
