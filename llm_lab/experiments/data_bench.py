"""``llm-lab bench data``: how fast ``data prepare`` turns text into ids, and at what memory, beside tiktoken.

For each size (10 MB and 100 MB by default), the first that many bytes of the corpus (cut at a line end) are:

- prepared by ``llm-lab data prepare --workers N`` in a fresh process: wall time, MB/s, peak resident memory of
  the main process and of its largest worker process (tiktoken encodes in threads: then there is none), and the
  CPU seconds of the main thread and of the encoders (threads or processes);
- encoded by ``tiktoken`` on one thread with the same ranks and pattern (``encode_ordinary``, 1 MB blocks, ids
  counted, in a fresh process): the reference speed.

The two alternate, ``repeats`` times each (medians), so a change in the machine's load hits both alike. On a busy
machine wall times say little about parallel speed; the "ratio from CPU s" column estimates the idle-machine ratio
from CPU seconds instead (tiktoken's, over the longer of prepare's main thread alone and all of prepare's CPU
time shared among ``workers`` cores; CPU seconds count from the start of the timed work). The corpus
is the user's file or, by default, generated text (Zipf-distributed made-up words in sentences and lines; no
download). The tokenizer is the user's or a BPE trained here on the corpus's first 2 MB.

Tokenizer training is timed on ``train_mb`` MB the same way: ``llm-lab tokenizer train --workers N``'s library
call (the reference trainer with its words counted in ``workers`` processes) against Hugging Face ``tokenizers``
(Rust, all cores), same file, vocabulary and special token.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llm_lab.experiments.tables import markdown_table, write_csv
from llm_lab.utils.io import atomic_write_text

__all__ = [
    "PrepareBenchRow",
    "TrainBenchRow",
    "generate_text",
    "run_data_benchmark",
    "write_data_bench_results",
]

_MB = 2**20


@dataclass
class PrepareBenchRow:
    """One corpus size: prepare against one-thread tiktoken (seconds are medians)."""

    size_mb: float
    workers: int
    encoder: str
    prepare_s: float
    tiktoken_s: float
    prepare_rss_mb: float  # peak resident memory of prepare's main process
    worker_rss_mb: float  # of its largest worker (0 with one worker)
    tiktoken_rss_mb: float
    tokens: int
    prepare_cpu_main_s: float = 0.0  # CPU seconds (user + system) of prepare's main thread
    prepare_cpu_workers_s: float = 0.0  # of all its encoders together (threads or processes)
    tiktoken_cpu_s: float = 0.0  # of the whole tiktoken process

    @property
    def idle_estimate(self) -> float:
        """The ratio to expect on an idle machine with one core per worker, from CPU seconds (which the machine's
        load hardly changes): tiktoken's CPU time over prepare's, that is the longer of its main thread alone
        and all its processes' CPU time shared among ``workers`` cores."""
        total = self.prepare_cpu_main_s + self.prepare_cpu_workers_s
        parallel = max(self.prepare_cpu_main_s, total / max(self.workers, 1))
        return self.tiktoken_cpu_s / parallel if parallel > 0 else float("nan")

    @property
    def prepare_mb_s(self) -> float:
        return self.size_mb / self.prepare_s

    @property
    def tiktoken_mb_s(self) -> float:
        return self.size_mb / self.tiktoken_s

    @property
    def speedup(self) -> float:
        """prepare's MB/s over one-thread tiktoken's (the target is >= 1.6 with two workers)."""
        return self.prepare_mb_s / self.tiktoken_mb_s

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "prepare_mb_s": self.prepare_mb_s, "tiktoken_mb_s": self.tiktoken_mb_s,
                "speedup": self.speedup, "idle_estimate": self.idle_estimate}


@dataclass
class TrainBenchRow:
    """Tokenizer training on ``size_mb`` MB: ours against HF ``tokenizers`` (medians)."""

    size_mb: float
    vocab_size: int
    ours_s: float
    hf_s: float
    workers: int = 1  # processes counting the words for ours

    @property
    def ratio(self) -> float:
        """ours / HF: below 1 means ours is faster."""
        return self.ours_s / self.hf_s

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def generate_text(path: str | Path, n_bytes: int, seed: int = 0) -> Path:
    """Write about ``n_bytes`` of English-like generated text to ``path`` (deterministic for a ``seed``).

    Words are made-up letter strings drawn with Zipf-like frequencies, capitalised at sentence starts, with
    punctuation, 8-20 words per sentence, a few sentences per line: enough structure for BPE to find merges.
    """
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    probabilities = 1.0 / np.arange(1, 27) ** 0.9
    lengths = rng.integers(1, 10, size=20_000)
    spelled = "".join(rng.choice(letters, size=int(lengths.sum()), p=probabilities / probabilities.sum()))
    starts = np.concatenate([[0], np.cumsum(lengths)])
    words = [spelled[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    path = Path(path)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < n_bytes:
            picks = rng.choice(len(words), size=200_000, p=weights)
            ends = np.cumsum(rng.integers(8, 21, size=20_000))
            sentences = np.split(picks, ends[ends < picks.size])
            lines = []
            for k, sentence in enumerate(sentences):
                text = " ".join(words[i] for i in sentence)
                lines.append(text[:1].upper() + text[1:] + ".!?,"[k % 4 if k % 4 != 3 else 0])
            block = "\n".join(" ".join(lines[i : i + 4]) for i in range(0, len(lines), 4)) + "\n"
            block = block[: n_bytes - written] if written + len(block) > n_bytes else block
            f.write(block)
            written += len(block.encode("utf-8"))
    return path


def _prefix(corpus: Path, n_bytes: int, out: Path) -> Path:
    """The first ``n_bytes`` of ``corpus`` (cut after a newline), copied to ``out``."""
    with open(corpus, "rb") as src, open(out, "wb") as dst:
        data = src.read(n_bytes)
        cut = data.rfind(b"\n") + 1 if len(data) == n_bytes else len(data)
        dst.write(data[: cut or len(data)])
    return out


# The two measured sides, each run in a fresh interpreter so that its peak memory is its own. A process started
# from a big one inherits its peak-RSS mark (fork, then exec), so Linux's mark is reset first (clear_refs 5) and
# read back as VmHWM; elsewhere ru_maxrss is what there is.
_PEAK_RSS = """
import resource
def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
def peak_kb():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def cpu_s(who):
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime
reset_peak()
"""

_PREPARE_CHILD = _PEAK_RSS + """
import json, resource, sys, time
from llm_lab.core.data.prepare import prepare_corpus
from llm_lab.core.tokenization import load_tokenizer
tokenizer = load_tokenizer(sys.argv[1])
cpu_start, main_start = cpu_s(resource.RUSAGE_SELF), time.thread_time()
start = time.perf_counter()
meta = prepare_corpus(tokenizer, [sys.argv[2]], sys.argv[3], progress=False, workers=int(sys.argv[4]),
                      overwrite=True)
seconds = time.perf_counter() - start
main_thread = time.thread_time() - main_start  # tiktoken's encoders are threads of this process
others = cpu_s(resource.RUSAGE_SELF) - cpu_start - main_thread + cpu_s(resource.RUSAGE_CHILDREN)
print(json.dumps({"seconds": seconds, "tokens": meta["total_tokens"], "encoder": meta["encoder"],
                  "rss_kb": peak_kb(), "child_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "cpu_main_s": main_thread, "cpu_workers_s": others}))
"""

_TIKTOKEN_CHILD = _PEAK_RSS + """
import json, resource, sys, time
from llm_lab.core.tokenization import load_tokenizer
encoding = load_tokenizer(sys.argv[1]).to_tiktoken()
cpu_start = cpu_s(resource.RUSAGE_SELF)
start = time.perf_counter()
tokens = 0
with open(sys.argv[2], "rb") as f:
    pending = b""
    while block := f.read(1 << 20):
        block = pending + block
        cut = block.rfind(b"\\n") + 1 or len(block)
        tokens += len(encoding.encode_ordinary(block[:cut].decode("utf-8")))
        pending = block[cut:]
    tokens += len(encoding.encode_ordinary(pending.decode("utf-8")))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "tokens": tokens, "rss_kb": peak_kb(),
                  "cpu_main_s": cpu_s(resource.RUSAGE_SELF) - cpu_start}))
"""


def _child(code: str, *args: Any) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"a benchmark process failed: {last}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _median_runs(sides: dict[str, Callable[[], dict[str, Any]]], repeats: int) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for _ in range(repeats):  # interleaved: a change in the machine's load hits every side alike
        for name, run in sides.items():
            runs[name].append(run())
    return runs


def _timed(fn: Callable[[], Any]) -> dict[str, Any]:
    start = time.perf_counter()
    fn()
    return {"seconds": time.perf_counter() - start}


def run_data_benchmark(
    work_dir: str | Path,
    *,
    corpus: str | Path | None = None,
    sizes_mb: tuple[float, ...] = (10, 100),
    workers: int = 2,
    tokenizer_dir: str | Path | None = None,
    vocab_size: int = 8192,
    repeats: int = 1,
    train_mb: float = 10,
    log: Callable[[str], None] = print,
) -> tuple[list[PrepareBenchRow], TrainBenchRow | None]:
    """Measure prepare and tokenizer training; see the module docstring.

    Args:
        work_dir: scratch folder for the text prefixes, corpora and the tokenizer (the caller removes it).
        corpus: a UTF-8 text file, or None for generated text.
        sizes_mb: corpus sizes to prepare, in MB (MiB).
        workers: ``data prepare --workers``.
        tokenizer_dir: a saved BPE tokenizer, or None to train one (``vocab_size``) on the corpus's first 2 MB.
        repeats: runs per side (median reported).
        train_mb: MB of text for the tokenizer-training comparison (0: skip it).
    """
    from llm_lab.core.data.tokenizer_training import train_tokenizer
    from llm_lab.core.tokenization import SubwordTokenizer, load_tokenizer
    from llm_lab.experiments.tokenizer_bench import train_hf_reference

    if repeats < 1 or workers < 1 or not sizes_mb or min(sizes_mb) <= 0:
        raise ValueError("repeats and workers must be at least 1 and every size positive")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    largest = int(max(max(sizes_mb), train_mb, 2) * _MB)
    if corpus is None:
        log(f"generating {largest / _MB:.0f} MB of text ...")
        corpus = generate_text(work / "generated.txt", largest)
    corpus = Path(corpus)
    if not corpus.is_file():
        raise FileNotFoundError(f"benchmark corpus not found: {corpus}")
    if tokenizer_dir is None:
        log(f"training a {vocab_size}-id BPE tokenizer on the first 2 MB ...")
        sample = _prefix(corpus, 2 * _MB, work / "sample.txt")
        tokenizer_dir = SubwordTokenizer.train(sample, vocab_size, show_progress=False).save(work / "tokenizer")
    load_tokenizer(tokenizer_dir).to_tiktoken()  # a tokenizer tiktoken can run, or fail now

    rows = []
    for size in sizes_mb:
        text = _prefix(corpus, int(size * _MB), work / f"text-{size:g}MB.txt")
        actual = text.stat().st_size / _MB
        log(f"{actual:.1f} MB: prepare --workers {workers} and tiktoken, {repeats} run(s) each ...")
        runs = _median_runs({
            "tiktoken": lambda text=text: _child(_TIKTOKEN_CHILD, tokenizer_dir, text),
            "prepare": lambda text=text: _child(_PREPARE_CHILD, tokenizer_dir, text, work / "corpus", workers),
        }, repeats)
        prepare, tiktoken = runs["prepare"], runs["tiktoken"]
        if prepare[0]["tokens"] != tiktoken[0]["tokens"]:  # one file is one document: the same ids, same count
            raise RuntimeError(f"prepare wrote {prepare[0]['tokens']} ids, tiktoken {tiktoken[0]['tokens']}")
        rows.append(PrepareBenchRow(
            size_mb=round(actual, 2),
            workers=workers,
            encoder=prepare[0]["encoder"],
            prepare_s=statistics.median(r["seconds"] for r in prepare),
            tiktoken_s=statistics.median(r["seconds"] for r in tiktoken),
            prepare_rss_mb=max(r["rss_kb"] for r in prepare) / 1024,
            worker_rss_mb=max(r["child_rss_kb"] for r in prepare) / 1024 if workers > 1 else 0.0,
            tiktoken_rss_mb=max(r["rss_kb"] for r in tiktoken) / 1024,
            tokens=int(prepare[0]["tokens"]),
            prepare_cpu_main_s=statistics.median(r["cpu_main_s"] for r in prepare),
            prepare_cpu_workers_s=statistics.median(r["cpu_workers_s"] for r in prepare),
            tiktoken_cpu_s=statistics.median(r["cpu_main_s"] for r in tiktoken),
        ))

    train_row = None
    if train_mb > 0:
        text = _prefix(corpus, int(train_mb * _MB), work / "train-text.txt")
        log(f"tokenizer training on {text.stat().st_size / _MB:.1f} MB: ours and HF tokenizers ...")
        runs = _median_runs({
            "ours": lambda: _timed(lambda: train_tokenizer([text], vocab_size, work / "trained", overwrite=True,
                                                           progress=False, workers=workers)),
            "hf": lambda: _timed(lambda: train_hf_reference(text, vocab_size)),
        }, repeats)
        train_row = TrainBenchRow(
            size_mb=round(text.stat().st_size / _MB, 2),
            vocab_size=vocab_size,
            ours_s=statistics.median(r["seconds"] for r in runs["ours"]),
            hf_s=statistics.median(r["seconds"] for r in runs["hf"]),
            workers=workers,
        )
    return rows, train_row


PREPARE_HEADERS = {
    "size_mb": "MB", "workers": "workers", "encoder": "encoder", "prepare_mb_s": "prepare MB/s",
    "tiktoken_mb_s": "tiktoken 1-thread MB/s", "speedup": "ratio", "idle_estimate": "ratio from CPU s",
    "prepare_rss_mb": "peak RSS main MB",
    "worker_rss_mb": "peak RSS worker MB", "tiktoken_rss_mb": "tiktoken RSS MB",
}
TRAIN_HEADERS = {"size_mb": "MB", "vocab_size": "vocab", "workers": "workers", "ours_s": "ours s",
                 "hf_s": "HF tokenizers s", "ratio": "ours / HF"}


def format_tables(rows: list[PrepareBenchRow], train_row: TrainBenchRow | None) -> str:
    """Markdown tables of both measurements."""
    text = markdown_table([r.to_dict() for r in rows], list(PREPARE_HEADERS), PREPARE_HEADERS, digits=3)
    if train_row is not None:
        text += "\n" + markdown_table([train_row.to_dict()], list(TRAIN_HEADERS), TRAIN_HEADERS, digits=3)
    return text


def write_data_bench_results(rows: list[PrepareBenchRow], train_row: TrainBenchRow | None, out_dir: str | Path,
                             context: dict[str, Any]) -> Path:
    """Write ``prepare.csv``, ``training.csv`` and ``results.md`` (tables + ``context``) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "prepare.csv", [r.to_dict() for r in rows])
    if train_row is not None:
        write_csv(out / "training.csv", [train_row.to_dict()])
    lines = [f"- {key}: {value}" for key, value in context.items()]
    atomic_write_text(out / "results.md", "# llm-lab bench data\n\n" + "\n".join(lines) + "\n\n"
                      + format_tables(rows, train_row))
    return out / "results.md"
