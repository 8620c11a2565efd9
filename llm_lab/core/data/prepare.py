"""Corpus preparation: text files -> ``train.bin`` + ``val.bin`` + ``meta.json`` + ``tokenizer/``.

Layout of a prepared directory::

    OUT/
      train.bin     token ids back to back, native byte order, no header (uint16 or uint32, see meta.json)
      val.bin       the same for the validation split
      meta.json     tokenizer type, vocab size, dtype, token counts, source files with their sha256
      tokenizer/    the tokenizer that produced the ids (``load_tokenizer(OUT / "tokenizer")``)

Each input file is one document. When the tokenizer has an end-of-text token (``eot_token_id`` is not None) it is
placed between consecutive documents, so the model learns where one text stops and the next begins.

The validation split is the **last** ``val_fraction`` of the whole token stream (after the documents are joined),
as in the usual small-corpus recipes; the training split is everything before it. Nothing is shuffled, so the
split is the same on every run and the validation text is text the model never trained on.

Files are read in chunks and tokenised as they stream, so a corpus larger than memory can be prepared. Chunks are
cut only just after a newline that ends a non-blank line and before a letter: at such a point every common BPE
pre-tokenisation pattern (GPT-2's and cl100k's) splits anyway, so the ids equal ``tokenizer.encode(whole_text)``.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from llm_lab.utils.io import atomic_write, atomic_write_json

__all__ = [
    "META_FORMAT_VERSION",
    "build_char_tokenizer",
    "dtype_for_vocab",
    "iter_text_chunks",
    "load_prepared",
    "prepare_corpus",
]

META_FORMAT_VERSION = 1
_READ_BYTES = 1 << 20  # bytes read per step: small enough to stream, large enough to keep encode() efficient
# A safe cut: after "\n" that follows a non-space character, before a letter (see the module docstring).
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=[^\W\d_])")


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id below ``vocab_size``: uint16 up to 65,536, else uint32."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise ValueError(f"vocab_size {vocab_size} does not fit in uint32")


def _last_safe_cut(text: str, search_from: int = 0) -> int:
    """Index of the last safe cut in ``text[search_from:]``, or -1 when there is none."""
    # Look at the tail first: a safe cut is almost always in the last few kilobytes.
    for start in (max(search_from, len(text) - 65536), search_from):
        cut = -1
        for match in _SAFE_CUT.finditer(text, start):
            cut = match.start()
        if cut > 0 or start == search_from:
            return cut
    return -1


def iter_text_chunks(path: str | Path, read_bytes: int = _READ_BYTES) -> Iterator[tuple[str, bytes]]:
    """Stream a UTF-8 file as ``(text_chunk, raw_bytes_read)`` pairs, cutting text only at safe points.

    The text is exactly the file's (no newline translation). ``raw_bytes_read`` is the bytes consumed since the
    previous chunk (for hashing and progress); the last pair may carry bytes with an empty text.
    """
    path = Path(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    pending = ""
    with open(path, "rb") as f:
        offset = 0
        searched = 0  # len(pending) after the last search
        while True:
            raw = f.read(read_bytes)
            final = not raw
            try:
                pending += decoder.decode(raw, final=final)
            except UnicodeDecodeError as e:
                raise ValueError(f"{path} is not UTF-8 text (bad byte near offset {offset + e.start})") from None
            offset += len(raw)
            if final:
                yield pending, raw
                return
            # Text kept from the previous step had no safe cut; only its last 2 characters can start one now.
            cut = _last_safe_cut(pending, max(0, searched - 2))
            searched = len(pending)
            if cut <= 0:
                yield "", raw  # no safe cut yet: keep the text, report the bytes
                continue
            yield pending[:cut], raw
            pending = pending[cut:]
            searched = len(pending)


def build_char_tokenizer(input_paths: Sequence[str | Path]) -> Any:
    """A ``CharTokenizer`` whose vocabulary is every character of the input files (read as they stream)."""
    from llm_lab.core.tokenization import CharTokenizer

    chars: set[str] = set()
    for path in input_paths:
        for text, _ in iter_text_chunks(path):
            chars.update(text)
    if not chars:
        raise ValueError("the corpus is empty: no characters to build a character vocabulary from")
    # The vocabulary depends only on which characters occur, so the sorted set stands in for the text.
    return CharTokenizer.from_text("".join(sorted(chars)))


def _saved_tokenizer_type(tokenizer_dir: Path, tokenizer: Any) -> str:
    config = tokenizer_dir / "tokenizer_config.json"
    with contextlib.suppress(OSError, ValueError, AttributeError):
        kind = json.loads(config.read_text(encoding="utf-8")).get("type")
        if isinstance(kind, str):
            return kind
    return type(tokenizer).__name__


def _default_mode(path: Path, directory: bool = False) -> None:
    """Give a file made by mkstemp/mkdtemp (private: 0600/0700) the permissions a plain open() would (umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def _copy_ids(src: np.ndarray, f: Any, step: int = 1 << 22) -> None:
    for start in range(0, src.size, step):
        f.write(np.ascontiguousarray(src[start : start + step]).tobytes())


def prepare_corpus(
    tokenizer: Any,
    input_paths: Sequence[str | Path],
    out_dir: str | Path,
    val_fraction: float = 0.1,
    *,
    context_length: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    read_bytes: int = _READ_BYTES,
) -> dict[str, Any]:
    """Tokenise text files into ``train.bin``/``val.bin``, write ``meta.json`` and save the tokenizer.

    Args:
        tokenizer: any project tokenizer (``encode``, ``vocab_size``, ``eot_token_id``, ``save``).
        input_paths: UTF-8 text files, one document each, in this order.
        out_dir: the directory to fill (created if needed).
        val_fraction: the share of the token stream, taken from its end, that becomes ``val.bin``; in [0, 1).
        context_length: if given, warn when the validation split is too short for one window of this length.
        overwrite: replace a corpus already prepared in ``out_dir`` (otherwise that is an error).
        progress: show a tqdm progress bar (bytes read) on stderr.
        read_bytes: bytes read per step (tests use small values to exercise chunking).

    Returns:
        The metadata written to ``meta.json``.

    Raises:
        ValueError: empty corpus, bad ``val_fraction``, non-UTF-8 input, ids that do not fit the vocabulary.
        FileNotFoundError: a missing input file.
        FileExistsError: ``out_dir`` already holds a prepared corpus and ``overwrite`` is False.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    paths = [Path(p) for p in input_paths]
    if not paths:
        raise ValueError("no input files given")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
    out_dir = Path(out_dir)
    meta_path = out_dir / "meta.json"
    if meta_path.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already holds a prepared corpus (meta.json); pass --overwrite to replace it")
    vocab_size = int(tokenizer.vocab_size)
    dtype = dtype_for_vocab(vocab_size)
    eot = tokenizer.eot_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    # Remove the old meta.json first: a directory with meta.json is always a complete, consistent corpus.
    meta_path.unlink(missing_ok=True)

    fd, tmp_name = tempfile.mkstemp(prefix=".tokens.", suffix=".tmp", dir=out_dir)
    tmp_path = Path(tmp_name)
    try:
        sources: list[dict[str, Any]] = []
        total = 0
        eot_count = 0
        bar = tqdm(
            total=sum(p.stat().st_size for p in paths),
            unit="B",
            unit_scale=True,
            desc="tokenising",
            disable=not progress,
        )
        with os.fdopen(fd, "wb") as f, bar:
            for path in paths:
                digest = hashlib.sha256()
                n_bytes = 0
                n_tokens = 0
                for text, raw in iter_text_chunks(path, read_bytes):
                    digest.update(raw)
                    n_bytes += len(raw)
                    bar.update(len(raw))
                    if not text:
                        continue
                    if n_tokens == 0 and total > 0 and eot is not None:
                        f.write(np.array([eot], dtype=dtype).tobytes())  # a document boundary
                        total += 1
                        eot_count += 1
                    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
                    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
                        raise ValueError(
                            f"the tokenizer produced id {int(ids.max())} outside its vocabulary of {vocab_size}"
                        )
                    f.write(ids.astype(dtype).tobytes())
                    n_tokens += int(ids.size)
                    total += int(ids.size)
                if n_tokens == 0:
                    warnings.warn(f"{path} is empty; skipped", stacklevel=2)
                sources.append({"path": str(path), "bytes": n_bytes, "sha256": digest.hexdigest(), "tokens": n_tokens})
            f.flush()
            os.fsync(f.fileno())
        if total == 0:
            raise ValueError("the corpus is empty: the input files hold no text")

        n_val = int(total * val_fraction)
        n_train = total - n_val
        if n_val == 0 and val_fraction > 0:  # val_fraction=0 asks for no validation split: no warning then
            warnings.warn(
                f"the validation split is empty ({total} tokens x val_fraction {val_fraction} rounds down to 0); "
                "raise val_fraction or add text",
                stacklevel=2,
            )
        elif context_length is not None and n_val < context_length + 1:
            warnings.warn(
                f"the validation split has {n_val} tokens, fewer than context_length + 1 = {context_length + 1}: "
                "it holds no full window; raise val_fraction or add text",
                stacklevel=2,
            )

        # val.bin = the tail of the stream; train.bin = the stream truncated to its head (no second full copy).
        stream = np.memmap(tmp_path, dtype=dtype, mode="r")
        with atomic_write(out_dir / "val.bin", "wb") as f:
            _copy_ids(stream[n_train:], f)
        del stream
        with open(tmp_path, "r+b") as f:
            f.truncate(n_train * dtype.itemsize)
            os.fsync(f.fileno())
        _default_mode(tmp_path)
        os.replace(tmp_path, out_dir / "train.bin")

        tokenizer_dir = out_dir / "tokenizer"
        staging = Path(tempfile.mkdtemp(prefix=".tokenizer.", dir=out_dir))
        try:
            tokenizer.save(staging)
            _default_mode(staging, directory=True)
            if tokenizer_dir.exists():
                shutil.rmtree(tokenizer_dir)
            os.replace(staging, tokenizer_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

        meta: dict[str, Any] = {
            "format_version": META_FORMAT_VERSION,
            "tokenizer": {
                "type": _saved_tokenizer_type(tokenizer_dir, tokenizer),
                "path": "tokenizer",
                "vocab_size": vocab_size,
                "eot_token_id": eot,
            },
            "vocab_size": vocab_size,
            "dtype": dtype.name,
            "train_tokens": n_train,
            "val_tokens": n_val,
            "total_tokens": total,
            "val_fraction": val_fraction,
            "val_split": "last val_fraction of the token stream",
            "documents": sum(1 for s in sources if s["tokens"]),
            "eot_tokens": eot_count,
            "sources": sources,
        }
        atomic_write_json(meta_path, meta)
        return meta
    finally:
        tmp_path.unlink(missing_ok=True)


def load_prepared(directory: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Open a prepared corpus: ``(train_ids, val_ids, meta)``, the ids memory-mapped read-only.

    Raises:
        FileNotFoundError: ``directory`` has no ``meta.json`` (not prepared, or preparation did not finish).
        ValueError: ``meta.json`` is from another format version, or a ``.bin`` does not match its counts.
    """
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a prepared corpus (no meta.json); create one with `llm-lab data prepare`"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} must hold a JSON object, not {type(meta).__name__}; prepare the corpus again")
    version = meta.get("format_version")
    if version != META_FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} has format_version {version!r}; this version of llm_lab reads {META_FORMAT_VERSION}. "
            "Prepare the corpus again."
        )
    missing = [key for key in ("dtype", "train_tokens", "val_tokens") if key not in meta]
    if missing:
        raise ValueError(f"{meta_path} lacks {', '.join(missing)}; prepare the corpus again")
    if meta["dtype"] not in ("uint16", "uint32"):
        raise ValueError(f"{meta_path}: dtype must be 'uint16' or 'uint32', got {meta['dtype']!r}")
    dtype = np.dtype(meta["dtype"])
    arrays = []
    for split in ("train", "val"):
        path = directory / f"{split}.bin"
        expected = meta[f"{split}_tokens"]
        if isinstance(expected, bool) or not isinstance(expected, int) or expected < 0:
            raise ValueError(f"{meta_path}: {split}_tokens must be a non-negative integer, got {expected!r}")
        size = path.stat().st_size
        if size != expected * dtype.itemsize:
            raise ValueError(
                f"{path} holds {size} bytes but meta.json promises {expected} {dtype} tokens "
                f"({expected * dtype.itemsize} bytes); prepare the corpus again"
            )
        arrays.append(np.memmap(path, dtype=dtype, mode="r") if size else np.empty(0, dtype=dtype))
    return arrays[0], arrays[1], meta
