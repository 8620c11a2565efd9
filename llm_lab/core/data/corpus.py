"""A prepared corpus, read back: :func:`load_prepared` opens its splits memory-mapped (checked against
``meta.json``), :func:`load_corpus_tokenizer` its tokenizer (checked against the recorded fingerprint) and
:func:`corpus_fingerprint` names its content. The layout and how one is written are in
:mod:`llm_lab.core.data.prepare`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from llm_lab.core.data.shards import ShardedIds, open_ids
from llm_lab.core.tokenization.fingerprint import tokenizer_fingerprint
from llm_lab.utils.dirswap import recover_directory
from llm_lab.utils.json_input import load_json_file

META_FORMAT_VERSION = 1
CORPUS_KIND = "llm-lab prepared corpus"  # meta.json's marker: only a directory with it may be replaced


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


def load_prepared(
    directory: str | Path,
) -> tuple[np.ndarray | ShardedIds, np.ndarray | ShardedIds, dict[str, Any]]:
    """Open a prepared corpus: ``(train_ids, val_ids, meta)``, the ids memory-mapped read-only.

    A split written as shards comes back as one :class:`~llm_lab.core.data.shards.ShardedIds` (indexed like an
    array, each shard memory-mapped); a split of one file as its ``np.memmap``.

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
    for split in ("train", "val"):
        expected = meta[f"{split}_tokens"]
        if isinstance(expected, bool) or not isinstance(expected, int) or expected < 0:
            raise ValueError(f"{meta_path}: {split}_tokens must be a non-negative integer, got {expected!r}")
    splits = _split_files(directory, meta)
    arrays: list[np.ndarray | ShardedIds] = []
    for split in ("train", "val"):
        expected = meta[f"{split}_tokens"]
        listed = sum(tokens for _, tokens in splits[split])
        if listed != expected:
            raise ValueError(f"{meta_path}: its {split} files hold {listed} tokens, not {split}_tokens {expected}")
        for path, tokens in splits[split]:
            size = path.stat().st_size
            if size != tokens * dtype.itemsize:
                raise ValueError(
                    f"{path} holds {size} bytes but meta.json promises {tokens} {dtype} tokens "
                    f"({tokens * dtype.itemsize} bytes); prepare the corpus again"
                )
        arrays.append(open_ids([path for path, _ in splits[split]], dtype))
    return arrays[0], arrays[1], meta


def _split_files(directory: Path, meta: dict[str, Any]) -> dict[str, list[tuple[Path, int]]]:
    """Each split's files with their token counts: ``meta["splits"]``, or ``train.bin``/``val.bin`` in corpora
    prepared before shards existed."""
    splits = meta.get("splits")
    if splits is None:
        return {split: [(directory / f"{split}.bin", meta[f"{split}_tokens"])] for split in ("train", "val")}
    where = directory / "meta.json"
    result: dict[str, list[tuple[Path, int]]] = {}
    for split in ("train", "val"):
        entries = splits.get(split) if isinstance(splits, dict) else None
        if not isinstance(entries, list):
            raise ValueError(f"{where}: \"splits\" lacks the {split} file list; prepare the corpus again")
        result[split] = []
        for entry in entries:
            name = entry.get("file") if isinstance(entry, dict) else None
            tokens = entry.get("tokens") if isinstance(entry, dict) else None
            if not isinstance(name, str) or Path(name).name != name or not name.endswith(".bin"):
                raise ValueError(f"{where}: {split} file {name!r} is not a .bin file of the corpus")
            if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
                raise ValueError(f"{where}: {name} has no valid token count ({tokens!r})")
            result[split].append((directory / name, tokens))
    return result
