"""The docs are code under test: every ```` ```python ```` and ```` ```bash ```` block of the tutorials, the how-to
guides and README.md runs here, one test per page, so a page that no longer matches the code fails by name.

The convention each page is written to (also in ``docs/how-to/index.md``):

* a page runs in a fresh temporary directory, its blocks in order; the python blocks of a page share one
  namespace (one process per page), each bash block runs with ``bash -euo pipefail`` with the venv's ``llm-lab``
  and ``python`` first on ``PATH``;
* the directory holds ``configs/`` (a copy of the repository's), ``scripts/`` (a link to them) and
  ``data/tiny_shakespeare.txt``: the real corpus where ``../shared/data/`` beside the checkout has it (or
  ``LLM_LAB_DOCS_CORPUS`` names it), else a text made here; ``HOME`` points inside it;
* the python blocks run with the CPU threads ``LLM_LAB_THREADS`` names, as ``llm-lab`` commands do (the test
  suite sets 1 thread, see ``tests/conftest.py``);
* ``LLM_LAB_DOCS_QUICK=1`` in the default suite: chapters that train longer read it for quick sizes; the slow
  suite runs every page again at full size, without it;
* ```` ```console ````, ```` ```text ```` and other languages are shown, not run;
* a page whose blocks take long even at quick sizes says ``<!-- docs-test: slow -->`` and runs in the slow suite
  only.

Run as a script (``python tests/docs/test_docs_code.py PAGE``) it runs one page in the current directory, which is
what each test does in a subprocess.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
SHARED_CORPUS = REPO.parent / "shared" / "data" / "tiny_shakespeare.txt"
SLOW_MARK = "<!-- docs-test: slow -->"
PAGE_TIMEOUT_S = 1800

_FENCE = re.compile(r"^([ \t]*)```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^\1```[ \t]*$", re.S | re.M)


@dataclass(frozen=True)
class Block:
    lang: str  # "python" or "bash"
    code: str
    line: int  # line of the opening fence, 1-based


def code_blocks(text: str) -> list[Block]:
    """The ```` ```python ```` and ```` ```bash ```` blocks of a Markdown text, in order (indented ones dedented)."""
    blocks = []
    for m in _FENCE.finditer(text):
        indent, lang, body = m.group(1), m.group(2), m.group(3)
        if lang not in ("python", "bash"):
            continue
        lines = [line[len(indent) :] if line.startswith(indent) else line for line in body.splitlines()]
        blocks.append(Block(lang, "\n".join(lines) + "\n", text[: m.start()].count("\n") + 1))
    return blocks


def pages() -> list[Path]:
    """Every page with code to run: the tutorials, the how-to guides (new ones are picked up by the glob), README."""
    found = sorted((DOCS / "tutorials").glob("**/*.md")) + sorted((DOCS / "how-to").glob("**/*.md"))
    return [page for page in [*found, REPO / "README.md"] if code_blocks(page.read_text(encoding="utf-8"))]


def is_slow(page: Path) -> bool:
    return SLOW_MARK in page.read_text(encoding="utf-8")


def self_made_corpus() -> str:
    """A stand-in for tiny Shakespeare where the real file is absent: speakers and lines, about 150 kB."""
    speakers = ["ROMEO", "JULIET", "KING HENRY", "FIRST CITIZEN", "MERCUTIO"]
    lines = [
        "to be, or not to be: that is the question.",
        "the quick brown fox jumps over the lazy dog, and the dog sleeps on.",
        "all that glitters is not gold; all who wander are not lost.",
        "what light through yonder window breaks? it is the east.",
        "now is the winter of our discontent made glorious summer.",
    ]
    return "".join(f"{speakers[i % 5]}:\n{lines[i % 5]}\n{lines[(i * 3 + 1) % 5]}\n\n" for i in range(1200))


def prepare_workdir(work: Path) -> None:
    """What every page may rely on (see the module docstring)."""
    (work / "home").mkdir(parents=True)
    (work / "data").mkdir()
    shutil.copytree(REPO / "configs", work / "configs")
    (work / "scripts").symlink_to(REPO / "scripts", target_is_directory=True)
    corpus = Path(os.environ.get("LLM_LAB_DOCS_CORPUS") or SHARED_CORPUS)
    if corpus.is_file():
        (work / "data" / "tiny_shakespeare.txt").symlink_to(corpus.resolve())
    else:
        (work / "data" / "tiny_shakespeare.txt").write_text(self_made_corpus(), encoding="utf-8")


def page_env(work: Path, quick: bool) -> dict[str, str]:
    env = dict(os.environ)  # PYTHONPATH and LLM_LAB_THREADS carry over
    env.update(
        HOME=str(work / "home"),
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        PYTHONUNBUFFERED="1",
        MPLBACKEND="Agg",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    env.pop("LLM_LAB_DOCS_QUICK", None)
    if quick:
        env["LLM_LAB_DOCS_QUICK"] = "1"
    return env


def run_page(page: Path) -> int:
    """Run ``page``'s blocks in the current directory (the runner a test starts); 0 when every block passed."""
    namespace: dict[str, object] = {"__name__": "__main__"}
    if os.environ.get("LLM_LAB_THREADS"):  # the python blocks get the CPU threads llm-lab commands would use
        import torch

        from llm_lab.utils.threads import resolve_threads

        torch.set_num_threads(resolve_threads(os.environ["LLM_LAB_THREADS"]))
    for block in code_blocks(page.read_text(encoding="utf-8")):
        where = f"{page.name} line {block.line} ({block.lang})"
        start = time.perf_counter()
        print(f"--- {where}", flush=True)
        if block.lang == "python":
            try:
                exec(compile(block.code, f"{page.name}:{block.line}", "exec"), namespace)
            except BaseException:
                traceback.print_exc()
                print(f"FAILED: {where}", flush=True)
                return 1
        else:
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code])
            if proc.returncode != 0:
                print(f"FAILED: {where}: exit code {proc.returncode}", flush=True)
                return 1
        print(f"--- {where}: {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_page(Path(sys.argv[1])))


# ------------------------------------------------------------------------------------------------------ tests
import pytest  # noqa: E402  (the runner above needs only the standard library)


def _run_in_subprocess(page: Path, tmp_path: Path, quick: bool) -> None:
    work = tmp_path / "work"
    prepare_workdir(work)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(page)],
        cwd=work,
        env=page_env(work, quick),
        capture_output=True,
        text=True,
        timeout=PAGE_TIMEOUT_S,
    )
    print(proc.stdout[-4000:])
    print(f"{page.relative_to(REPO)}: {time.perf_counter() - start:.1f} s ({'quick' if quick else 'full'})")
    if proc.returncode != 0:
        pytest.fail(
            f"{page.relative_to(REPO)}: a code block failed\n--- stdout (tail) ---\n{proc.stdout[-5000:]}\n"
            f"--- stderr (tail) ---\n{proc.stderr[-5000:]}"
        )


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(REPO)) for p in paths]


QUICK_PAGES = [p for p in pages() if not is_slow(p)]


@pytest.mark.parametrize("page", QUICK_PAGES, ids=_ids(QUICK_PAGES))
def test_page_quick(page: Path, tmp_path: Path) -> None:
    _run_in_subprocess(page, tmp_path, quick=True)


@pytest.mark.slow
@pytest.mark.parametrize("page", pages(), ids=_ids(pages()))
def test_page_full(page: Path, tmp_path: Path) -> None:
    _run_in_subprocess(page, tmp_path, quick=False)


def test_code_blocks_are_found_as_the_convention_says() -> None:
    text = (
        "intro\n```bash\nls\n```\n```text\nshown\n```\n```console\n$ shown too\n```\n"
        "- a list item:\n\n  ```python\n  x = 1\n  ```\n```python title=\"x.py\"\nprint(x)\n```\n"
    )
    blocks = code_blocks(text)
    assert [(b.lang, b.code, b.line) for b in blocks] == [
        ("bash", "ls\n", 2),
        ("python", "x = 1\n", 13),
        ("python", "print(x)\n", 16),
    ]


def test_a_failing_block_names_its_page_and_line(tmp_path: Path) -> None:
    page = tmp_path / "broken.md"
    page.write_text("# t\n\n```python\nvalue = 41\n```\n\n```python\nassert value == 42, value\n```\n")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(page)], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "FAILED: broken.md line 7 (python)" in proc.stdout
    assert "AssertionError: 41" in proc.stderr

