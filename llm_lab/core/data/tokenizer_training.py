"""Training a BPE tokenizer on a corpus of any input format: ``llm-lab tokenizer train``.

The documents come from :func:`llm_lab.core.data.sources.resolve_inputs` (text, JSON lines, Parquet, a
``datasets`` folder; compressed; folders and globs), streamed as pieces cut at safe points, and go straight into
:meth:`SubwordTokenizer.train <llm_lab.core.tokenization.SubwordTokenizer.train>`, the readable reference trainer,
with its words counted in ``workers`` processes: the result equals ``SubwordTokenizer.train(documents, ...)`` on the
same documents. Memory grows with the number of
*distinct* pre-tokens (words), not with the corpus size. The folder written is what ``data prepare --tokenizer DIR``
reads; it replaces ``out_dir`` only when complete, and only a folder that holds nothing but a tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from llm_lab.core.data.sources import DocumentSource, resolve_inputs
from llm_lab.core.tokenization import EOT_TOKEN, SubwordTokenizer
from llm_lab.utils.dirswap import holds_working_directory, recover_directory, staged_directory, unexpected_files

__all__ = ["TOKENIZER_FILES", "train_tokenizer"]

#: What a saved BPE tokenizer folder holds (``SubwordTokenizer.save``): all that ``--overwrite`` may replace.
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")


def _check_out(out_dir: Path, overwrite: bool) -> None:
    recover_directory(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a directory")
    if holds_working_directory(out_dir):
        raise ValueError(f"--out {out_dir} is the current directory (or holds it); give a sub-directory")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    foreign = unexpected_files(out_dir, TOKENIZER_FILES)
    if foreign:
        raise ValueError(f"--out {out_dir} holds {foreign[0]}, which is not a tokenizer file; choose another --out")
    if not overwrite:
        raise FileExistsError(f"{out_dir} already holds a tokenizer; pass --overwrite to replace it")


def _texts(sources: list[DocumentSource], progress: bool) -> Iterator[str]:
    bar = tqdm(total=sum(s.size() for s in sources), unit="B", unit_scale=True, desc="counting words",
               disable=not progress)
    with bar:
        for source in sources:
            done = 0
            for piece in source.pieces():
                yield piece.text
                bar.update(source.bytes_read - done)
                done = source.bytes_read
            bar.update(source.bytes_read - done)


def train_tokenizer(
    inputs: Sequence[str | os.PathLike | DocumentSource],
    vocab_size: int,
    out_dir: str | os.PathLike,
    *,
    text_field: str = "text",
    separator: str | None = None,
    pattern: str = "gpt2",
    special_tokens: Sequence[str] = (EOT_TOKEN,),
    overwrite: bool = False,
    progress: bool = True,
    workers: int = 1,
) -> dict[str, Any]:
    """Train a byte-level BPE tokenizer on the documents of ``inputs`` and save it in ``out_dir``.

    Args:
        inputs: files, folders, globs or sources, as for ``data prepare``.
        vocab_size: ids wanted in all: 256 bytes + merges + special tokens.
        out_dir: the tokenizer folder to write (replaced only with ``overwrite``, and only if it holds a tokenizer).
        text_field: the record field holding the text (JSON lines, Parquet, datasets).
        separator: split text files into documents at this text (see ``data prepare --separator``).
        pattern: "gpt2" or "gpt4" pre-tokenisation.
        special_tokens: texts with an id each (default: ``<|endoftext|>``, the document separator).
        overwrite: replace a tokenizer already in ``out_dir``.
        progress: progress bars (bytes read, then merges) on stderr.
        workers: processes that count the words (the result does not depend on it).

    Returns:
        A summary: ``vocab_size``, ``merges``, ``pattern``, ``documents``, ``bytes``.
    """
    sources = list(inputs) if inputs and all(isinstance(i, DocumentSource) for i in inputs) else resolve_inputs(
        [str(i) for i in inputs], text_field, separator)  # type: ignore[arg-type]
    if pattern not in ("gpt2", "gpt4"):
        raise ValueError(f"pattern must be 'gpt2' or 'gpt4' (the patterns a corpus streams for), got {pattern!r}")
    out_dir = Path(out_dir)
    _check_out(out_dir, overwrite)
    tokenizer = SubwordTokenizer.train(
        _texts(sources, progress), vocab_size, special_tokens=tuple(special_tokens), pattern=pattern,
        show_progress=progress, workers=workers,
    )
    _check_out(out_dir, overwrite)  # still ours to replace after the (long) training
    with staged_directory(out_dir) as staged:
        tokenizer.save(staged)
    return {
        "vocab_size": tokenizer.vocab_size,
        "merges": len(tokenizer.merges),
        "pattern": pattern,
        "documents": sum(s.documents for s in sources),
        "bytes": sum(s.bytes_read for s in sources),
    }
