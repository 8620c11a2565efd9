"""Corpus preparation: documents -> ``train.bin`` + ``val.bin`` + ``meta.json`` + ``tokenizer/``.

Layout of a prepared directory::

    OUT/
      train.bin     token ids back to back, native byte order, no header (uint16 or uint32, see meta.json)
      val.bin       the same for the validation split
      meta.json     the marker ``"kind": "llm-lab prepared corpus"``, tokenizer type, vocab size and fingerprint,
                    dtype, token counts, every source (path, format, bytes, sha256, documents, tokens), the
                    split files (``"splits"``) and the list of the corpus's files
      tokenizer/    the tokenizer that produced the ids (``load_tokenizer(OUT / "tokenizer")``)

With ``shard_tokens`` the splits are shards instead, ``train-00000.bin, train-00001.bin, ...`` and ``val-00000.bin,
...``, at most ``shard_tokens`` ids each, listed in order in ``meta.json``'s ``"splits"``; :func:`load_prepared`
reads them back as one memory-mapped array either way.

:func:`prepare_corpus` runs in named steps: check the inputs, check that ``OUT`` may receive a corpus (empty, or
with ``overwrite`` a corpus this project prepared and nothing else), tokenise into a hidden directory beside
``OUT`` (saving the tokenizer there while the encoders work), split, write ``meta.json``, and only then swap the
new directory in. The previous corpus stays loadable through any failure or kill.

Inputs are documents from any of the formats in :mod:`llm_lab.core.data.sources` (text files, JSON lines,
Parquet, a ``datasets`` folder; ``.gz``/``.zst``; folders and globs). When the tokenizer has an end-of-text token
(``eot_token_id`` is not None) it is placed between consecutive documents, so the model learns where one text stops
and the next begins. Empty documents are skipped and counted.

The validation split is the **last** ``val_fraction`` of the whole token stream (after the documents are joined),
as in the usual small-corpus recipes; the training split is everything before it. Nothing is shuffled, so the
split is the same on every run and the validation text is text the model never trained on.

Everything streams: text is read in pieces cut at safe points (so the ids equal ``tokenizer.encode(whole_text)``),
encoded in batches by ``workers`` processes (:mod:`llm_lab.core.data.encode`, tiktoken where it gives the same ids)
and written in input order; memory stays bounded whatever the corpus size.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

# Reading a prepared corpus back (corpus.py); its names also stay importable from here, where they were first defined.
from llm_lab.core.data.corpus import (
    CORPUS_KIND,
    META_FORMAT_VERSION,
    corpus_fingerprint,
    load_corpus_tokenizer,
    load_prepared,
)
from llm_lab.core.data.encode import choose_encoder, encode_batches
from llm_lab.core.data.shards import StreamWriter, split_stream
from llm_lab.core.data.sources import READ_BYTES, DocumentSource, iter_text_pieces, resolve_inputs
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
from llm_lab.utils.parallel import alongside

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
    "usable_workers",
]

_READ_BYTES = READ_BYTES
# Characters per batch handed to an encoder, and bytes read per step while preparing: small enough that the parallel
# encoders finish together (only the last batch is encoded alone; at 15 MB/s 256 KiB take under 20 ms), large
# enough that handing a batch over costs nothing next to encoding it.
_BATCH_CHARS = 1 << 18
_PREPARE_READ_BYTES = 1 << 18
MAX_SHARDS = 100_000  # shard names have five digits


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id below ``vocab_size``: uint16 up to 65,536, else uint32."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise ValueError(f"vocab_size {vocab_size} does not fit in uint32")


def usable_workers() -> int:
    """The default ``workers``: the CPU cores this process may run on (at most 256, the most ``workers`` takes)."""
    from llm_lab.utils.threads import usable_cpus

    return max(1, min(256, len(usable_cpus())))


def iter_text_chunks(path: str | Path, read_bytes: int = _READ_BYTES) -> Iterator[tuple[str, bytes]]:
    """Stream a UTF-8 file as ``(text_chunk, raw_bytes_read)`` pairs, cutting text only at safe points.

    ``raw_bytes_read`` is the bytes consumed since the previous chunk; the last pair may carry bytes with an empty
    text. :func:`llm_lab.core.data.sources.iter_text_pieces` is the reader underneath, the one every format uses.
    """
    path = Path(path)
    read: list[bytes] = []

    class _Recording:
        def read(self, size: int) -> bytes:
            data = f.read(size)
            read.append(data)
            return data

    with open(path, "rb") as f:
        for text in iter_text_pieces(_Recording(), str(path), read_bytes):
            yield text, b"".join(read)
            read.clear()
    yield "", b"".join(read)


def read_text_file(path: str | Path) -> str:
    """The whole text of a UTF-8 file exactly as :func:`prepare_corpus` reads it (:func:`iter_text_chunks`).

    No newline translation: ``\r\n`` stays two characters, as in the ids ``data prepare`` and ``train`` make, so
    ``llm-lab eval`` scores the same tokens they would (Python's text mode turned CRLF into LF, and eval scored
    other tokens than training saw).

    Raises:
        ValueError: the file is not UTF-8 (the message gives the byte offset).
    """
    return "".join(text for text, _ in iter_text_chunks(path))


def _cuts_anywhere(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` encodes any cut of a text as the whole (a character vocabulary does)."""
    return bool(getattr(tokenizer, "splits_anywhere", False))


def _as_sources(
    inputs: Sequence[str | Path | DocumentSource], text_field: str, separator: str | None = None
) -> list[DocumentSource]:
    if inputs and all(isinstance(i, DocumentSource) for i in inputs):
        return list(inputs)  # type: ignore[arg-type]
    paths = [str(i) if isinstance(i, Path) else i for i in inputs]
    return resolve_inputs(paths, text_field, separator)  # type: ignore[arg-type]


def build_char_tokenizer(
    input_paths: Sequence[str | Path | DocumentSource], text_field: str = "text", progress: bool = False
) -> Any:
    """A ``CharTokenizer`` whose vocabulary is every character of the inputs' documents (read as they stream)."""
    from llm_lab.core.tokenization import CharTokenizer

    sources = _as_sources(input_paths, text_field)
    chars: set[str] = set()
    bar = tqdm(total=sum(s.size() for s in sources), unit="B", unit_scale=True, desc="reading characters",
               disable=not progress, delay=1.0)
    with bar:
        for source in sources:
            done = 0
            for piece in source.pieces(cut_anywhere=True):
                chars.update(piece.text)
                bar.update(source.bytes_read - done)
                done = source.bytes_read
            bar.update(source.bytes_read - done)
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


# ---------------------------------------------------------------------------------------------------- the steps


def _check_inputs(
    input_paths: Sequence[str | Path | DocumentSource], val_fraction: Any, text_field: str, separator: str | None
) -> list[DocumentSource]:
    """Step 1: the arguments. Every input resolves to a readable source and ``val_fraction`` is in [0, 1)."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    return _as_sources(input_paths, text_field, separator)


def _check_options(workers: Any, shard_tokens: Any) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
        raise ValueError(f"workers must be an int from 1 to 256, got {workers!r}")
    if shard_tokens is not None and (
        isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1
    ):
        raise ValueError(f"shard_tokens must be a positive int (ids per shard) or None, got {shard_tokens!r}")


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


def _batches(
    sources: list[DocumentSource], read_bytes: int, cut_anywhere: bool, owners: list[list[int]], bar: Any
) -> Iterator[list[tuple[str, bool]]]:
    """The corpus's pieces in batches of about ``_BATCH_CHARS`` characters; ``owners`` receives, per batch, the
    source index of each piece (kept here, not sent to the workers)."""
    batch: list[tuple[str, bool]] = []
    owner: list[int] = []
    size = 0
    first = True
    for index, source in enumerate(sources):
        done = 0
        for piece in source.pieces(read_bytes, cut_anywhere):
            batch.append((piece.text, piece.starts_document and not first))
            owner.append(index)
            first = False
            size += len(piece.text)
            bar.update(source.bytes_read - done)
            done = source.bytes_read
            if size >= _BATCH_CHARS:
                owners.append(owner)
                yield batch
                batch, owner, size = [], [], 0
        bar.update(source.bytes_read - done)
        if source.documents == 0:
            warnings.warn(f"{source.path} is empty; skipped", stacklevel=4)
    if batch:
        owners.append(owner)
        yield batch


def _tokenise_inputs(
    tokenizer: Any,
    sources: list[DocumentSource],
    writer: StreamWriter,
    options: dict[str, Any],
    while_encoding: Callable[[], None],
) -> tuple[list[dict[str, Any]], int, str]:
    """Step 3: stream every source's documents through the encoder into ``writer`` (ids back to back, in order).

    ``while_encoding`` runs once, in a thread beside the encoding (:func:`llm_lab.utils.parallel.alongside`), from
    the start, or from the first batch written when the encoders are worker processes (they are forked by then):
    done inline it would hold the GIL and leave the encoders without work until it ended. Its failure stops the
    encoding at the next batch.

    Returns:
        ``(sources, eot_tokens, encoder name)``; each source's summary with its token count.
    """
    bar = tqdm(total=sum(s.size() for s in sources), unit="B", unit_scale=True, desc="tokenising",
               disable=not options["progress"])
    tokens = [0] * len(sources)
    owners: list[list[int]] = []
    with bar:
        batches = _batches(sources, options["read_bytes"], _cuts_anywhere(tokenizer), owners, bar)
        first = next(batches, None)
        # 4 KiB checked against the reference encoder (pure Python, before any work starts: kept short; that
        # tiktoken's merges are ours is checked on the tokenizer itself, see TiktokenEncoder.applies_to)
        sample = "".join(text for text, _ in first or [])[:4096]
        encoder = choose_encoder(tokenizer, writer.dtype, options["encoder"], sample)
        stream = itertools.chain([first] if first is not None else [], batches)
        with contextlib.ExitStack() as beside:
            # Encoders in threads (tiktoken) or none: start at once. Worker processes: once they are forked.
            forks = not encoder.releases_gil and options["workers"] > 1
            check = None if forks else beside.enter_context(alongside(while_encoding))
            for ids, counts in encode_batches(stream, encoder, options["workers"]):
                writer.write(ids)
                for index, count in zip(owners.pop(0), counts, strict=True):
                    tokens[index] += count
                if check is None:
                    check = beside.enter_context(alongside(while_encoding))
                check()
    if writer.total == 0:
        raise ValueError("the corpus is empty: the inputs hold no text")
    summaries = [source.summary() | {"tokens": n} for source, n in zip(sources, tokens, strict=True)]
    eot_count = writer.total - sum(tokens)
    return summaries, eot_count, encoder.name


def _save_tokenizer(tokenizer: Any, staged: Path, options: dict[str, Any]) -> None:
    """Step 5, run while the encoders work: the tokenizer into the corpus, and its fingerprint for ``meta.json``."""
    tokenizer.save(staged / "tokenizer")
    options["fingerprint"] = tokenizer_fingerprint(tokenizer)


def _split_sizes(total: int, val_fraction: float, context_length: int | None) -> int:
    """Step 4a: the number of training tokens (the rest is validation), with a warning for a useless val split."""
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
    return n_train


def _corpus_meta(
    staged: Path,
    tokenizer: Any,
    sources: list[dict[str, Any]],
    splits: dict[str, list[dict[str, Any]]],
    options: dict[str, Any],
    eot_count: int,
    dtype: np.dtype,
) -> dict[str, Any]:
    """Step 6: the manifest: marker and version, tokenizer (with its fingerprint), counts, sources, files."""
    n_train, n_val = (sum(f["tokens"] for f in splits[split]) for split in ("train", "val"))
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
            "fingerprint": options["fingerprint"],
        },
        "vocab_size": vocab_size,
        "dtype": dtype.name,
        "train_tokens": n_train,
        "val_tokens": n_val,
        "total_tokens": n_train + n_val,
        "val_fraction": options["val_fraction"],
        "val_split": "last val_fraction of the token stream",
        "documents": sum(s["documents"] for s in sources),
        "empty_documents": sum(s["empty_documents"] for s in sources),
        "eot_tokens": eot_count,
        "text_field": options["text_field"],
        "separator": options["separator"],
        "shard_tokens": options["shard_tokens"],
        "encoder": options["encoder_used"],
        "splits": splits,
        "sources": sources,
        "files": files,
    }


def prepare_corpus(
    tokenizer: Any,
    input_paths: Sequence[str | Path | DocumentSource],
    out_dir: str | Path,
    val_fraction: float = 0.1,
    *,
    context_length: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    read_bytes: int = _PREPARE_READ_BYTES,
    text_field: str = "text",
    separator: str | None = None,
    workers: int = 1,
    shard_tokens: int | None = None,
    encoder: str = "auto",
) -> dict[str, Any]:
    """Tokenise documents into ``train.bin``/``val.bin`` (or shards), write ``meta.json`` and save the tokenizer.

    The new corpus is built in a hidden directory beside ``out_dir`` and swapped in only when complete
    (:func:`llm_lab.utils.dirswap.staged_directory`): a failure or a kill at any moment leaves the previous
    corpus as it was (or, after a kill during the swap itself, the next command finishes it).

    Args:
        tokenizer: any project tokenizer (``encode``, ``vocab_size``, ``eot_token_id``, ``save``).
        input_paths: files, folders and globs (see :func:`llm_lab.core.data.sources.resolve_inputs`), or sources.
        out_dir: the directory to fill (created if needed).
        val_fraction: the share of the token stream, taken from its end, that becomes ``val.bin``; in [0, 1).
        context_length: if given, warn when the validation split is too short for one window of this length.
        overwrite: replace a corpus already prepared in ``out_dir`` (otherwise that is an error).
        progress: show a tqdm progress bar (bytes read) on stderr.
        read_bytes: bytes read per step (tests use small values to exercise chunking).
        text_field: the field of JSON lines, Parquet and datasets records that holds the text.
        separator: split text files into documents at this text (e.g. TinyStories' ``<|endoftext|>`` lines).
        workers: parallel encoders (1: in this thread; tiktoken runs in threads, the pure-Python encoder in
            processes). The ids do not depend on it.
        shard_tokens: write shards of at most this many ids (``train-00000.bin, ...``) instead of one file each.
        encoder: "auto" (tiktoken where it gives the same ids, else the tokenizer's own), "tiktoken", "llm-lab".

    Returns:
        The metadata written to ``meta.json``.

    Raises:
        ValueError: empty corpus, bad ``val_fraction``, unreadable or malformed input (named with its record),
            ids that do not fit the vocabulary, an ``out_dir`` holding files this project did not write.
        FileNotFoundError: a missing input file.
        FileExistsError: ``out_dir`` already holds a prepared corpus and ``overwrite`` is False.
    """
    sources = _check_inputs(input_paths, val_fraction, text_field, separator)
    _check_options(workers, shard_tokens)
    out_dir = Path(out_dir)
    check_replaceable_corpus(out_dir, overwrite)
    dtype = dtype_for_vocab(int(tokenizer.vocab_size))
    options = {"progress": progress, "read_bytes": read_bytes, "workers": workers, "encoder": encoder,
               "val_fraction": val_fraction, "text_field": text_field, "shard_tokens": shard_tokens,
               "separator": separator}
    with staged_directory(out_dir) as staged:
        writer = StreamWriter(staged, dtype, shard_tokens)
        try:
            summaries, eot_count, options["encoder_used"] = _tokenise_inputs(
                tokenizer, sources, writer, options, lambda: _save_tokenizer(tokenizer, staged, options))
        except BaseException:
            writer.abort()
            raise
        files = writer.close()
        if len(files) > MAX_SHARDS:
            raise ValueError(f"{len(files)} shards are more than {MAX_SHARDS:,}; raise shard_tokens")
        n_train = _split_sizes(writer.total, val_fraction, context_length)
        splits = split_stream(files, n_train, dtype, sharded=shard_tokens is not None)  # step 4
        meta = _corpus_meta(staged, tokenizer, summaries, splits, options, eot_count, dtype)
        atomic_write_json(staged / "meta.json", meta)
        check_replaceable_corpus(out_dir, overwrite)  # still ours: nothing foreign appeared while we worked
    return meta
