"""Corpus preparation: text files -> ``train.bin`` + ``val.bin`` + ``meta.json`` + ``tokenizer/``.

Layout of a prepared directory::

    OUT/
      train.bin     token ids back to back, native byte order, no header (uint16 or uint32, see meta.json)
      val.bin       the same for the validation split
      meta.json     the marker ``"kind": "llm-lab prepared corpus"``, tokenizer type, vocab size and fingerprint,
                    dtype, token counts, source files with their sha256, and the list of the corpus's files
      tokenizer/    the tokenizer that produced the ids (``load_tokenizer(OUT / "tokenizer")``)

:func:`prepare_corpus` runs in named steps: check the inputs, check that ``OUT`` may receive a corpus (empty, or
with ``overwrite`` a corpus this project prepared and nothing else), tokenise into a hidden directory beside
``OUT``, split, save the tokenizer, write ``meta.json``, and only then swap the new directory in. The previous
corpus stays loadable through any failure or kill.

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
import errno
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from llm_lab.core.tokenization.fingerprint import tokenizer_fingerprint
from llm_lab.utils.dirswap import (
    holds_working_directory,
    recover_directory,
    remove_stale_temp_files,
    staged_directory,
    unexpected_files,
)
from llm_lab.utils.io import atomic_write_json
from llm_lab.utils.json_input import load_json_file

__all__ = [
    "CORPUS_KIND",
    "META_FORMAT_VERSION",
    "build_char_tokenizer",
    "check_replaceable_corpus",
    "corpus_fingerprint",
    "dtype_for_vocab",
    "iter_text_chunks",
    "load_corpus_tokenizer",
    "load_prepared",
    "prepare_corpus",
    "read_text_file",
]

META_FORMAT_VERSION = 1
CORPUS_KIND = "llm-lab prepared corpus"  # meta.json's marker: only a directory with it may be replaced
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


def read_text_file(path: str | Path) -> str:
    """The whole text of a UTF-8 file exactly as :func:`prepare_corpus` reads it (:func:`iter_text_chunks`).

    No newline translation: ``\r\n`` stays two characters, as in the ids ``data prepare`` and ``train`` make, so
    ``llm-lab eval`` scores the same tokens they would (Python's text mode turned CRLF into LF, and eval scored
    other tokens than training saw).

    Raises:
        ValueError: the file is not UTF-8 (the message gives the byte offset).
    """
    return "".join(text for text, _ in iter_text_chunks(path))


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
        kind = load_json_file(config).get("type")
        if isinstance(kind, str):
            return kind
    return type(tokenizer).__name__


def _copy_ids(src: np.ndarray, f: Any, step: int = 1 << 22) -> None:
    for start in range(0, src.size, step):
        f.write(np.ascontiguousarray(src[start : start + step]).tobytes())


# ---------------------------------------------------------------------------------------------------- the steps


def _check_inputs(input_paths: Sequence[str | Path], val_fraction: Any) -> list[Path]:
    """Step 1: the arguments. Every input exists and ``val_fraction`` is a number in [0, 1)."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    paths = [Path(p) for p in input_paths]
    if not paths:
        raise ValueError("no input files given")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
    return paths


def _corpus_files(out_dir: Path, meta: Any) -> list[str]:
    """The files a prepared corpus consists of, as its ``meta.json`` lists them (checked to stay inside it)."""
    listed = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(listed, list) or not all(isinstance(f, str) for f in listed):
        raise ValueError(
            f"{out_dir / 'meta.json'} does not list its files (no \"files\" list): it was not written by this "
            "version of llm-lab, so nothing in it is replaced; remove the directory yourself or choose another --out"
        )
    for name in listed:
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts:
            raise ValueError(f"{out_dir / 'meta.json'} lists {name!r}, a path outside the corpus; nothing replaced")
    return ["meta.json", *listed]


def check_replaceable_corpus(out_dir: str | Path, overwrite: bool) -> None:
    """Step 2: may ``out_dir`` receive a new corpus? Raise if not; change nothing but dead writers' leftovers.

    It may when it does not exist, is empty, or (with ``overwrite``) holds a corpus this project prepared and
    nothing else: ``meta.json`` with its marker and format version, and exactly the files it lists. Anything
    else is refused by name, so no file the project did not write is ever deleted.

    Raises:
        FileExistsError: a corpus is there and ``overwrite`` is False.
        ValueError: ``out_dir`` is a file, or holds something this project did not write (the first one named).
    """
    out_dir = Path(out_dir)
    recover_directory(out_dir)  # a swap a kill interrupted: finish or roll it back first
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a directory")
    blocker = next((p for p in out_dir.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(blocker))
    if holds_working_directory(out_dir):
        raise ValueError(
            f"--out {out_dir} is the current directory (or holds it); a corpus is built beside it and swapped in, "
            "so give a sub-directory or run from elsewhere"
        )
    if not out_dir.is_dir():
        return
    remove_stale_temp_files(out_dir)
    meta_path = out_dir / "meta.json"
    if not meta_path.is_file():
        found = unexpected_files(out_dir, ())
        if found:
            raise ValueError(
                f"--out {out_dir} is not empty and holds no prepared corpus (found {found[0]}); choose a new or "
                "empty directory"
            )
        return
    if not overwrite:
        raise FileExistsError(f"{out_dir} already holds a prepared corpus (meta.json); pass --overwrite to replace it")
    meta = load_json_file(meta_path)
    ours = isinstance(meta, dict) and meta.get("kind") == CORPUS_KIND
    if not ours or meta.get("format_version") != META_FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} is not the manifest of a corpus this version of llm-lab prepared (no \"kind\": "
            f"\"{CORPUS_KIND}\", format_version {META_FORMAT_VERSION}); nothing replaced, remove it yourself or "
            "choose another --out"
        )
    foreign = unexpected_files(out_dir, _corpus_files(out_dir, meta))
    if foreign:
        raise ValueError(
            f"{out_dir} holds {foreign[0]}, which llm-lab did not write; move it out (or choose another --out) "
            "before --overwrite replaces the corpus"
        )


def _tokenise_inputs(
    tokenizer: Any, paths: list[Path], stream_path: Path, dtype: np.dtype, read_bytes: int, progress: bool
) -> tuple[list[dict[str, Any]], int, int]:
    """Step 3: stream every input through the tokenizer into ``stream_path`` (ids back to back).

    Returns:
        ``(sources, total_tokens, eot_tokens)``; ``sources`` holds each file's path, bytes, sha256 and tokens.
    """
    vocab_size = int(tokenizer.vocab_size)
    eot = tokenizer.eot_token_id
    sources: list[dict[str, Any]] = []
    total = 0
    eot_count = 0
    bar = tqdm(
        total=sum(p.stat().st_size for p in paths), unit="B", unit_scale=True, desc="tokenising", disable=not progress
    )
    with open(stream_path, "wb") as f, bar:
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
                warnings.warn(f"{path} is empty; skipped", stacklevel=3)
            sources.append({"path": str(path), "bytes": n_bytes, "sha256": digest.hexdigest(), "tokens": n_tokens})
        f.flush()
        os.fsync(f.fileno())
    if total == 0:
        raise ValueError("the corpus is empty: the input files hold no text")
    return sources, total, eot_count


def _split_stream(
    staged: Path, total: int, val_fraction: float, dtype: np.dtype, context_length: int | None
) -> tuple[int, int]:
    """Step 4: ``staged/train.bin`` holds the whole stream; move its last ``val_fraction`` into ``val.bin``.

    Returns:
        ``(train_tokens, val_tokens)``.
    """
    n_val = int(total * val_fraction)
    n_train = total - n_val
    if n_val == 0 and val_fraction > 0:  # val_fraction=0 asks for no validation split: no warning then
        warnings.warn(
            f"the validation split is empty ({total} tokens x val_fraction {val_fraction} rounds down to 0); "
            "raise val_fraction or add text",
            stacklevel=3,
        )
    elif context_length is not None and n_val < context_length + 1:
        warnings.warn(
            f"the validation split has {n_val} tokens, fewer than context_length + 1 = {context_length + 1}: "
            "it holds no full window; raise val_fraction or add text",
            stacklevel=3,
        )
    # val.bin = the tail of the stream; train.bin = the stream truncated to its head (no second full copy).
    stream_path = staged / "train.bin"
    stream = np.memmap(stream_path, dtype=dtype, mode="r") if total else np.empty(0, dtype=dtype)
    with open(staged / "val.bin", "wb") as f:
        _copy_ids(stream[n_train:], f)
        f.flush()
        os.fsync(f.fileno())
    del stream
    with open(stream_path, "r+b") as f:
        f.truncate(n_train * dtype.itemsize)
        os.fsync(f.fileno())
    return n_train, n_val


def _corpus_meta(
    staged: Path,
    tokenizer: Any,
    sources: list[dict[str, Any]],
    counts: tuple[int, int],
    val_fraction: float,
    eot_count: int,
    dtype: np.dtype,
) -> dict[str, Any]:
    """Step 6: the manifest: marker and version, tokenizer (with its fingerprint), counts, sources, files."""
    n_train, n_val = counts
    vocab_size = int(tokenizer.vocab_size)
    files = sorted(
        p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file() and p.name != "meta.json"
    )
    return {
        "kind": CORPUS_KIND,
        "format_version": META_FORMAT_VERSION,
        "tokenizer": {
            "type": _saved_tokenizer_type(staged / "tokenizer", tokenizer),
            "path": "tokenizer",
            "vocab_size": vocab_size,
            "eot_token_id": tokenizer.eot_token_id,
            "fingerprint": tokenizer_fingerprint(tokenizer),
        },
        "vocab_size": vocab_size,
        "dtype": dtype.name,
        "train_tokens": n_train,
        "val_tokens": n_val,
        "total_tokens": n_train + n_val,
        "val_fraction": val_fraction,
        "val_split": "last val_fraction of the token stream",
        "documents": sum(1 for s in sources if s["tokens"]),
        "eot_tokens": eot_count,
        "sources": sources,
        "files": files,
    }


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

    The new corpus is built in a hidden directory beside ``out_dir`` and swapped in only when complete
    (:func:`llm_lab.utils.dirswap.staged_directory`): a failure or a kill at any moment leaves the previous
    corpus as it was (or, after a kill during the swap itself, the next command finishes it).

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
        ValueError: empty corpus, bad ``val_fraction``, non-UTF-8 input, ids that do not fit the vocabulary, an
            ``out_dir`` holding files this project did not write.
        FileNotFoundError: a missing input file.
        FileExistsError: ``out_dir`` already holds a prepared corpus and ``overwrite`` is False.
    """
    paths = _check_inputs(input_paths, val_fraction)
    out_dir = Path(out_dir)
    check_replaceable_corpus(out_dir, overwrite)
    dtype = dtype_for_vocab(int(tokenizer.vocab_size))
    with staged_directory(out_dir) as staged:
        stream = staged / "train.bin"
        sources, total, eot_count = _tokenise_inputs(tokenizer, paths, stream, dtype, read_bytes, progress)
        counts = _split_stream(staged, total, val_fraction, dtype, context_length)
        tokenizer.save(staged / "tokenizer")  # step 5
        meta = _corpus_meta(staged, tokenizer, sources, counts, val_fraction, eot_count, dtype)
        atomic_write_json(staged / "meta.json", meta)
        check_replaceable_corpus(out_dir, overwrite)  # still ours: nothing foreign appeared while we worked
    return meta


def corpus_fingerprint(meta: dict[str, Any]) -> str:
    """A sha256 naming a prepared corpus's content: its sources' hashes, split and tokenizer (not its paths).

    Two directories prepared from the same files with the same tokenizer and split have the same fingerprint.
    """
    tokenizer = meta.get("tokenizer") if isinstance(meta.get("tokenizer"), dict) else {}
    content = {
        "sources": [[s.get("sha256"), s.get("bytes")] for s in meta.get("sources", []) if isinstance(s, dict)],
        "train_tokens": meta.get("train_tokens"),
        "val_tokens": meta.get("val_tokens"),
        "dtype": meta.get("dtype"),
        "tokenizer": tokenizer.get("fingerprint"),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def load_corpus_tokenizer(directory: str | Path, meta: dict[str, Any]) -> Any:
    """The tokenizer of a prepared corpus, checked against the fingerprint ``meta.json`` recorded.

    Raises:
        ValueError: the saved tokenizer maps ids to other text than the one that prepared the ids (edited or
            replaced after preparation).
    """
    from llm_lab.core.tokenization import load_tokenizer

    directory = Path(directory)
    tokenizer = load_tokenizer(directory / "tokenizer")
    recorded = meta.get("tokenizer", {}).get("fingerprint") if isinstance(meta.get("tokenizer"), dict) else None
    if recorded is not None and tokenizer_fingerprint(tokenizer) != recorded:
        raise ValueError(
            f"{directory / 'tokenizer'} is not the tokenizer that prepared {directory} (its ids map to other text "
            "than meta.json records); prepare the corpus again"
        )
    return tokenizer


def load_prepared(directory: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Open a prepared corpus: ``(train_ids, val_ids, meta)``, the ids memory-mapped read-only.

    Raises:
        FileNotFoundError: ``directory`` has no ``meta.json`` (not prepared, or preparation did not finish).
        ValueError: ``meta.json`` is from another format version, or a ``.bin`` does not match its counts.
    """
    directory = Path(directory)
    recover_directory(directory)  # a replacement a kill interrupted is finished (or rolled back) first
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a prepared corpus (no meta.json); create one with `llm-lab data prepare`"
        )
    meta = load_json_file(meta_path)
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
