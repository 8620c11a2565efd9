"""Side-by-side timing of ``SubwordTokenizer`` against HF ``tokenizers`` (training) and ``tiktoken`` (encoding).

Behind ``llm-lab bench tokenizer`` (``scripts/bench_tokenizer.py``). Each time is the median of ``repeats`` runs,
interleaved so that a change in machine load hits both sides alike. The references are dev dependencies,
imported only here.

Training, both sides from the same file with the GPT-2 split, ``<|endoftext|>`` special and ``min_frequency=2``:

- ours: ``SubwordTokenizer.train(path, ...)`` (reading + pre-tokenising + merging, single thread, pure Python);
- HF ``files``: ``Tokenizer.train([path])`` (Rust, reads line by line, all cores);
- HF ``iterator``: ``train_from_iterator([text])`` (the whole text as one sequence, like ours).

Encoding the whole file with the trained vocabulary (ids checked equal):

- ours cold: piece cache cleared before each run (every distinct piece is merged once);
- ours warm: cache kept from the previous run (the steady state of a long-running process);
- tiktoken: ``Encoding`` from our ranks and pattern, ``encode_ordinary`` (Rust, one thread).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from llm_lab.core.tokenization.bpe import EOT_TOKEN, SubwordTokenizer

__all__ = ["TokenizerBenchRow", "format_table", "run_tokenizer_benchmark"]


@dataclass
class TokenizerBenchRow:
    vocab_size: int
    train_ours_s: float
    train_hf_files_s: float
    train_hf_iterator_s: float
    encode_ours_cold_s: float
    encode_ours_warm_s: float
    encode_tiktoken_s: float
    n_tokens: int
    ids_identical: bool

    @property
    def train_ratio(self) -> float:
        """Ours / the faster of the two HF runs (the conservative ratio)."""
        return self.train_ours_s / min(self.train_hf_files_s, self.train_hf_iterator_s)

    @property
    def encode_cold_ratio(self) -> float:
        return self.encode_ours_cold_s / self.encode_tiktoken_s

    @property
    def encode_warm_ratio(self) -> float:
        return self.encode_ours_warm_s / self.encode_tiktoken_s

    def to_dict(self) -> dict[str, float | int | bool]:
        return {**asdict(self), "train_ratio": self.train_ratio, "encode_cold_ratio": self.encode_cold_ratio,
                "encode_warm_ratio": self.encode_warm_ratio}


def train_hf_reference(source: Path | str, vocab_size: int):
    """HF ``tokenizers`` BPE trained like ours: GPT-2 split, ``<|endoftext|>`` special, ``min_frequency=2``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # the GPT-2 split regex
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    if isinstance(source, Path):
        tok.train([str(source)], trainer)
    else:
        tok.train_from_iterator([source], trainer)
    return tok


def run_tokenizer_benchmark(data: str | os.PathLike, vocab_sizes: list[int], repeats: int = 5,
                            log: Callable[[str], None] = print) -> list[TokenizerBenchRow]:
    """Time training and whole-file encoding at each vocabulary size; see the module docstring."""
    path = Path(data)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark data not found: {path}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    text = path.read_text(encoding="utf-8")
    rows = []
    for vocab_size in vocab_sizes:
        log(f"vocab {vocab_size}: training ({repeats} runs each) ...")
        ours_t, files_t, iter_t = [], [], []
        train_ours = partial(SubwordTokenizer.train, path, vocab_size, show_progress=False)
        for _ in range(repeats):  # interleaved, so a change in load hits every side
            seconds, tok = _timed(train_ours)
            ours_t.append(seconds)
            files_t.append(_timed(partial(train_hf_reference, path, vocab_size))[0])
            iter_t.append(_timed(partial(train_hf_reference, text, vocab_size))[0])

        log(f"vocab {vocab_size}: encoding ...")
        enc = tok.to_tiktoken()
        ids = tok.encode(text)
        cold_t, warm_t, tik_t = [], [], []
        for _ in range(repeats):
            tok.clear_cache()
            cold_t.append(_timed(partial(tok.encode, text))[0])
            warm_t.append(_timed(partial(tok.encode, text))[0])
            tik_t.append(_timed(partial(enc.encode_ordinary, text))[0])
        rows.append(TokenizerBenchRow(
            vocab_size=vocab_size,
            train_ours_s=statistics.median(ours_t),
            train_hf_files_s=statistics.median(files_t),
            train_hf_iterator_s=statistics.median(iter_t),
            encode_ours_cold_s=statistics.median(cold_t),
            encode_ours_warm_s=statistics.median(warm_t),
            encode_tiktoken_s=statistics.median(tik_t),
            n_tokens=len(ids),
            ids_identical=enc.encode_ordinary(text) == ids,
        ))
    return rows


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def format_table(rows: list[TokenizerBenchRow]) -> str:
    """A plain-text table: seconds per side and the ratios the targets are stated in."""
    header = (f"{'vocab':>6} | {'train ours':>10} {'HF files':>9} {'HF iter':>8} {'ratio':>6} | "
              f"{'enc cold':>8} {'enc warm':>8} {'tiktoken':>8} {'cold x':>6} {'warm x':>6} | {'tokens':>8} same")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.vocab_size:>6} | {r.train_ours_s:>10.3f} {r.train_hf_files_s:>9.3f} {r.train_hf_iterator_s:>8.3f} "
            f"{r.train_ratio:>6.2f} | {r.encode_ours_cold_s:>8.3f} {r.encode_ours_warm_s:>8.3f} "
            f"{r.encode_tiktoken_s:>8.3f} {r.encode_cold_ratio:>6.2f} {r.encode_warm_ratio:>6.2f} | "
            f"{r.n_tokens:>8} {'yes' if r.ids_identical else 'NO'}"
        )
    lines.append("times in seconds (median); ratio = ours / faster HF training; cold x / warm x = ours / tiktoken")
    return "\n".join(lines)
