"""Token-id files of a prepared corpus: written as a stream, split into train/val, read back as one array.

A corpus's token stream is written once, in order, into files of at most ``shard_tokens`` ids each
(:class:`StreamWriter`). :func:`split_stream` then names them: the first ``n_train`` ids become ``train.bin`` (or
``train-00000.bin, train-00001.bin, ...`` when sharded) and the rest ``val.bin`` (``val-00000.bin, ...``); the file
that holds the boundary is cut in two, so nothing is copied but the part of one file. :class:`ShardedIds` reads a
list of such files as one 1-D array, each file memory-mapped: the training code indexes it exactly as it indexes
one ``np.memmap``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ShardedIds", "StreamWriter", "open_ids", "split_stream"]


class ShardedIds:
    """Several 1-D id arrays (memory-mapped shards) read as one: ``len``, ``size``, ``dtype``, ``max()``, slices
    (a view, nothing read) and integer-array indexing (one gather per shard touched), as a ``np.ndarray``.

    Args:
        shards: the arrays, in stream order, all of one dtype.
    """

    ndim = 1

    def __init__(self, shards: Sequence[np.ndarray]) -> None:
        shards = [s for s in shards if s.size]
        if not shards:
            raise ValueError("ShardedIds needs at least one non-empty shard")
        dtypes = {s.dtype for s in shards}
        if len(dtypes) != 1:
            raise ValueError(f"shards must share one dtype, got {sorted(str(d) for d in dtypes)}")
        self.shards = list(shards)
        self.dtype = shards[0].dtype
        self._starts = np.cumsum([0] + [s.size for s in shards])  # shard k holds [starts[k], starts[k + 1])

    @property
    def size(self) -> int:
        return int(self._starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (self.size,)

    def __len__(self) -> int:
        return self.size

    def max(self) -> Any:
        return max(s.max() for s in self.shards)

    def _slice(self, start: int, stop: int) -> np.ndarray | ShardedIds:
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        last = int(np.searchsorted(self._starts, stop, side="left"))
        parts = []
        for k in range(max(first, 0), min(last, len(self.shards))):
            lo, hi = int(self._starts[k]), int(self._starts[k + 1])
            parts.append(self.shards[k][max(start, lo) - lo : min(stop, hi) - lo])
        parts = [p for p in parts if p.size]
        if not parts:
            return np.empty(0, dtype=self.dtype)
        return parts[0] if len(parts) == 1 else ShardedIds(parts)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.size)
            if step != 1:
                raise ValueError("ShardedIds slices take no step")
            return self._slice(start, max(start, stop))
        if isinstance(index, int | np.integer):
            i = int(index) + (self.size if index < 0 else 0)
            if not 0 <= i < self.size:
                raise IndexError(f"index {int(index)} out of range for {self.size} ids")
            k = int(np.searchsorted(self._starts, i, side="right")) - 1
            return self.shards[k][i - int(self._starts[k])]
        positions = np.asarray(index, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= self.size):
            raise IndexError(f"positions out of range for {self.size} ids")
        out = np.empty(positions.shape, dtype=self.dtype)
        shard_of = np.searchsorted(self._starts, positions, side="right") - 1
        for k in np.unique(shard_of):
            mask = shard_of == k
            out[mask] = self.shards[k][positions[mask] - self._starts[k]]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = np.concatenate([np.asarray(s) for s in self.shards])
        return whole if dtype is None else whole.astype(dtype)

    def tolist(self) -> list[int]:
        return np.asarray(self).tolist()

    def __repr__(self) -> str:
        return f"ShardedIds({len(self.shards)} shards, {self.size} ids, {self.dtype})"


def open_ids(paths: Sequence[Path], dtype: np.dtype) -> np.ndarray | ShardedIds:
    """The ids of ``paths`` as one read-only array: a ``np.memmap`` for one file, :class:`ShardedIds` for more."""
    arrays = [np.memmap(p, dtype=dtype, mode="r") for p in paths if p.stat().st_size]
    if not arrays:
        return np.empty(0, dtype=dtype)
    return arrays[0] if len(arrays) == 1 else ShardedIds(arrays)


class StreamWriter:
    """Write a token stream into ``directory/stream-00000.bin, ...``, at most ``shard_tokens`` ids per file.

    Args:
        directory: where the files go (a staging directory).
        dtype: the ids' dtype.
        shard_tokens: ids per file, or None for one file.
    """

    def __init__(self, directory: Path, dtype: np.dtype, shard_tokens: int | None = None) -> None:
        self.directory, self.dtype, self.shard_tokens = Path(directory), np.dtype(dtype), shard_tokens
        self.files: list[tuple[Path, int]] = []  # (path, ids) of the files closed so far
        self.total = 0
        self._f: Any = None
        self._in_file = 0

    def _roll(self) -> None:
        self._close_file()
        path = self.directory / f"stream-{len(self.files):05d}.bin"
        self._f = open(path, "wb")  # noqa: SIM115 (closed in _close_file)
        self._path = path
        self._in_file = 0

    def _close_file(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self.files.append((self._path, self._in_file))
            self._f = None

    def write(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=self.dtype)
        start = 0
        while start < ids.size:
            if self._f is None or (self.shard_tokens is not None and self._in_file >= self.shard_tokens):
                self._roll()
            room = ids.size - start if self.shard_tokens is None else self.shard_tokens - self._in_file
            part = ids[start : start + room]
            self._f.write(part.tobytes())
            self._in_file += part.size
            self.total += part.size
            start += part.size

    def close(self) -> list[tuple[Path, int]]:
        """Close the last file; return every file with its id count."""
        self._close_file()
        return self.files

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _copy_ids(src: np.ndarray, f: Any, step: int = 1 << 22) -> None:
    for start in range(0, src.size, step):
        f.write(np.ascontiguousarray(src[start : start + step]).tobytes())


def split_stream(
    files: list[tuple[Path, int]], n_train: int, dtype: np.dtype, sharded: bool
) -> dict[str, list[dict[str, Any]]]:
    """Rename the stream files into the train and val files: the first ``n_train`` ids are training.

    Files wholly before ``n_train`` are renamed; the one that holds the boundary is truncated after its val part
    has been copied into the first val file. Names: ``train.bin``/``val.bin``, or numbered when ``sharded``.

    Returns:
        ``{"train": [{"file": name, "tokens": n}, ...], "val": [...]}`` (``val.bin`` is written even when empty,
        unsharded, so an unsharded corpus keeps its two files).
    """
    dtype = np.dtype(dtype)
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}

    def name(split: str) -> str:
        return f"{split}-{len(splits[split]):05d}.bin" if sharded else f"{split}.bin"

    directory = files[0][0].parent if files else None
    start = 0
    for path, count in files:
        end = start + count
        if end <= n_train:
            target = path.with_name(name("train"))
            os.replace(path, target)
            splits["train"].append({"file": target.name, "tokens": count})
        elif start >= n_train:
            target = path.with_name(name("val"))
            os.replace(path, target)
            splits["val"].append({"file": target.name, "tokens": count})
        else:  # the boundary: its tail goes to val, its head stays train
            keep = n_train - start
            ids = np.memmap(path, dtype=dtype, mode="r")
            val_path = path.with_name(name("val"))
            with open(val_path, "wb") as f:
                _copy_ids(ids[keep:], f)
                f.flush()
                os.fsync(f.fileno())
            del ids
            with open(path, "r+b") as f:
                f.truncate(keep * dtype.itemsize)
                os.fsync(f.fileno())
            splits["val"].append({"file": val_path.name, "tokens": count - keep})
            target = path.with_name(name("train"))
            os.replace(path, target)
            splits["train"].append({"file": target.name, "tokens": keep})
        start = end
    if not sharded and directory is not None:
        for split in ("train", "val"):
            if not splits[split]:
                (directory / f"{split}.bin").touch()
                splits[split].append({"file": f"{split}.bin", "tokens": 0})
    return splits
