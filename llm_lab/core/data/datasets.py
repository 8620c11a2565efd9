"""Language-modelling datasets: a 1-D stream of token ids cut into (input, target) windows.

A window of ``context_length + 1`` consecutive ids starting at ``i`` gives the input ``ids[i : i + T]`` and the
target ``ids[i + 1 : i + T + 1]`` (the input shifted by one). Training draws window starts at random, and only
from the ``torch.Generator`` it is handed, so a trainer that saves and restores that generator resumes on
exactly the same batches. Evaluation walks fixed, contiguous, non-overlapping windows, the same on every call.

The ids stay where they are: a ``np.memmap`` of a prepared ``train.bin`` (or a
:class:`~llm_lab.core.data.shards.ShardedIds` over its shards) is read window by window from disk, never copied
whole into memory.

Packing (``data.packing`` in a run config; :data:`PACKINGS` is the only list): where training windows may start.

    contiguous   anywhere (the default): every position of the stream is a window start
    bos          at a document start only: position 0 and each end-of-text token, which then opens the window as
                 a beginning-of-sequence token, so no window begins in the middle of a document (nanochat and
                 most pretraining codebases start every row at a document's beginning; nanochat also packs rows
                 best-fit, which this simpler rule leaves out). Documents shorter than a window are followed by
                 the next ones, separated by the end-of-text token, as in contiguous windows.

Evaluation always walks contiguous windows, so validation losses of both packings are comparable.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from llm_lab.core.data.shards import ShardedIds

__all__ = ["PACKINGS", "BosPacking", "CharDataset", "ContiguousPacking", "LanguageModelingDataset"]

Batch = tuple[torch.Tensor, torch.Tensor]


def _as_id_array(ids: Sequence[int] | np.ndarray | ShardedIds) -> np.ndarray | ShardedIds:
    """Return ``ids`` as a 1-D integer array, without copying arrays (memmaps included)."""
    if isinstance(ids, np.ndarray | ShardedIds):
        array = ids
    elif isinstance(ids, torch.Tensor):
        array = ids.detach().cpu().numpy()
    else:
        array = np.asarray(list(ids), dtype=np.int64)
    if array.ndim != 1:
        raise ValueError(f"token ids must be a 1-D sequence, got an array of shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got dtype {array.dtype}")
    # Unsigned dtypes (the .bin files) cannot be negative; signed ones are checked (one pass over the ids).
    if array.size and np.issubdtype(array.dtype, np.signedinteger) and int(array.min()) < 0:
        raise ValueError(f"token ids must be non-negative, found {int(array.min())}")
    return array


class ContiguousPacking:
    """Windows may start anywhere in the stream (every position)."""

    name: ClassVar[str] = "contiguous"

    @staticmethod
    def window_starts(ids: np.ndarray | ShardedIds, context_length: int, eot_token_id: int | None) -> None:
        return None  # no restriction


class BosPacking:
    """Windows start at a document start: position 0 and every end-of-text token (it opens the window)."""

    name: ClassVar[str] = "bos"
    _SCAN = 1 << 24  # ids compared per step: the stream is scanned in pieces, never loaded whole

    @classmethod
    def window_starts(
        cls, ids: np.ndarray | ShardedIds, context_length: int, eot_token_id: int | None
    ) -> np.ndarray:
        if eot_token_id is None:
            raise ValueError(
                "data.packing 'bos' starts windows at end-of-text tokens, and this tokenizer has none (a char "
                "tokenizer); use a BPE tokenizer or data.packing 'contiguous'"
            )
        n = int(ids.size)
        last = n - context_length - 1  # the last start with a whole window after it
        found = [np.zeros(1, dtype=np.int64)]
        for start in range(0, max(last + 1, 0), cls._SCAN):
            stop = min(start + cls._SCAN, last + 1)
            found.append(np.flatnonzero(np.asarray(ids[start:stop]) == eot_token_id).astype(np.int64) + start)
        starts = np.concatenate(found)
        starts = starts[starts <= last]
        return np.unique(starts)


#: Every packing, by name: the only list of them (``data.packing`` is checked against it).
PACKINGS: dict[str, type[ContiguousPacking] | type[BosPacking]] = {
    cls.name: cls for cls in (ContiguousPacking, BosPacking)
}


class LanguageModelingDataset:
    """Windows of ``context_length`` token ids over one long stream, for next-token prediction.

    Args:
        ids: the token stream: a list of ints, a 1-D integer ``np.ndarray``, or a ``np.memmap`` (kept on disk).
        context_length: the number of input positions per window (``T``); each window reads ``T + 1`` ids.

    Raises:
        ValueError: if the stream is empty or shorter than ``context_length + 1``.

    ``len(ds)`` is the number of distinct windows, ``len(ids) - context_length``; ``ds[i]`` is the window
    starting at ``i`` as two int64 tensors ``(x, y)`` of length ``context_length``.

    ``window_starts`` (from a packing's ``window_starts``, e.g. :class:`BosPacking`) limits where
    :meth:`get_batch` may start a window: it then draws one of these positions, uniformly.
    """

    def __init__(
        self,
        ids: Sequence[int] | np.ndarray | ShardedIds,
        context_length: int,
        window_starts: np.ndarray | None = None,
    ) -> None:
        if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 1:
            raise ValueError(f"context_length must be a positive int, got {context_length!r}")
        array = _as_id_array(ids)
        if array.size == 0:
            raise ValueError(
                f"the token stream is empty; it needs at least context_length + 1 = {context_length + 1} tokens"
            )
        if array.size < context_length + 1:
            raise ValueError(
                f"the token stream has {array.size} tokens but context_length {context_length} needs at least "
                f"{context_length + 1}; use more text or a smaller context_length"
            )
        self.ids = array
        self.context_length = context_length
        if window_starts is not None:
            window_starts = np.asarray(window_starts, dtype=np.int64)
            if window_starts.size == 0:
                raise ValueError("no window start fits a whole window; use more text or a smaller context_length")
            if int(window_starts.min()) < 0 or int(window_starts.max()) > array.size - context_length - 1:
                raise ValueError("window_starts must lie in [0, len(ids) - context_length - 1]")
        self.window_starts = window_starts
        # Offsets 0..T of one window, reused by every batch: start[:, None] + offsets gathers (B, T + 1) at once.
        self._offsets = np.arange(context_length + 1, dtype=np.int64)

    @classmethod
    def from_bin(
        cls, path: str | Path, context_length: int, dtype: str | np.dtype = "uint16"
    ) -> LanguageModelingDataset:
        """Memory-map a flat binary file of token ids (``train.bin``/``val.bin``) without reading it.

        Args:
            path: the ``.bin`` file: token ids back to back, native byte order, no header.
            context_length: as in the constructor.
            dtype: the ids' dtype, as recorded in the corpus's ``meta.json`` (``"uint16"`` or ``"uint32"``).
        """
        path = Path(path)
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"dtype {dtype!r} is not a numpy dtype; use 'uint16' or 'uint32'") from None
        if not np.issubdtype(dtype, np.integer):
            raise ValueError(f"dtype must be an integer dtype such as 'uint16' or 'uint32', got {dtype}")
        size = path.stat().st_size  # FileNotFoundError names the path
        if size % dtype.itemsize:
            raise ValueError(
                f"{path} holds {size} bytes, not a whole number of {dtype} ids ({dtype.itemsize} bytes each); "
                "is the dtype right?"
            )
        if size == 0:
            ids: np.ndarray = np.empty(0, dtype=dtype)  # np.memmap refuses empty files
        else:
            ids = np.memmap(path, dtype=dtype, mode="r")
        try:
            return cls(ids, context_length)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def __len__(self) -> int:
        return int(self.ids.size) - self.context_length

    @property
    def num_tokens(self) -> int:
        """The length of the token stream."""
        return int(self.ids.size)

    @functools.cached_property
    def max_id(self) -> int:
        """The largest id in the stream (one pass over it, on first use; a memmap is read, not copied)."""
        return int(self.ids.max())

    def check_vocab_size(self, vocab_size: int) -> None:
        """Raise ``ValueError`` unless every id of the stream lies in ``[0, vocab_size)``.

        Checking the stream once, where it enters training, lets the training step skip the model's per-batch
        range check (a host-device sync on a GPU). Ids are never negative (see the constructor).
        """
        if self.max_id >= vocab_size:
            raise ValueError(
                f"the token stream holds id {self.max_id}, outside the model's vocabulary: ids must lie in "
                f"[0, vocab_size={vocab_size}); was it prepared with another tokenizer?"
            )

    def __getitem__(self, index: int) -> Batch:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"window index {index} out of range for {n} windows")
        window = torch.from_numpy(np.asarray(self.ids[index : index + self.context_length + 1], dtype=np.int64))
        return window[:-1], window[1:]

    def _gather(self, starts: np.ndarray, device: torch.device | str | None) -> Batch:
        # One fancy-index read of all B windows: (B, T + 1). On a memmap it touches only these pages.
        windows = np.asarray(self.ids[starts[:, None] + self._offsets], dtype=np.int64)
        batch = torch.from_numpy(windows)
        x, y = batch[:, :-1], batch[:, 1:]
        if device is not None and torch.device(device).type != "cpu":
            # Pinned host memory lets the copy overlap with compute on CUDA.
            pin = torch.device(device).type == "cuda"
            x = (x.pin_memory() if pin else x).to(device, non_blocking=pin)
            y = (y.pin_memory() if pin else y).to(device, non_blocking=pin)
        else:
            x, y = x.contiguous(), y.contiguous()
        return x, y

    def get_batch(self, batch_size: int, generator: torch.Generator, device: torch.device | str | None = None) -> Batch:
        """Draw ``batch_size`` windows at uniformly random starts.

        Args:
            batch_size: number of windows ``B``.
            generator: the only source of randomness; its state fully determines the batch.
            device: where to put the tensors (default: CPU).

        Returns:
            ``(x, y)``, two int64 tensors of shape ``(B, T)`` with ``y[:, t] == x[:, t + 1]`` for ``t < T - 1``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if self.window_starts is None:
            starts = torch.randint(len(self), (batch_size,), generator=generator, device=generator.device)
            return self._gather(starts.cpu().numpy(), device)
        picks = torch.randint(self.window_starts.size, (batch_size,), generator=generator, device=generator.device)
        return self._gather(self.window_starts[picks.cpu().numpy()], device)

    @property
    def num_eval_windows(self) -> int:
        """How many contiguous non-overlapping windows ``eval_batches`` walks: ``(len(ids) - 1) // T``."""
        return (self.num_tokens - 1) // self.context_length

    def eval_batches(
        self,
        batch_size: int,
        max_batches: int | None = None,
        device: torch.device | str | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Batch]:
        """Yield fixed batches of contiguous, non-overlapping windows, the same ones on every call.

        Window ``k`` starts at ``k * T``, so every token (but the last few) is predicted exactly once. Batches
        hold ``batch_size`` consecutive windows; the last one may be smaller. With ``world_size > 1`` the
        batches are dealt round-robin: ``rank`` gets batches ``rank, rank + world_size, ...`` of the first
        ``max_batches`` (so the ranks together cover the same windows as one process).

        Args:
            batch_size: windows per batch.
            max_batches: stop after this many batches in total (default: all windows).
            device: where to put the tensors (default: CPU).
            rank: this process's index among ``world_size`` (distributed evaluation).
            world_size: number of processes sharing the batches.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        n_windows = self.num_eval_windows
        n_batches = -(-n_windows // batch_size)
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
        for b in range(rank, n_batches, world_size):
            first = b * batch_size
            count = min(batch_size, n_windows - first)
            starts = (np.arange(first, first + count, dtype=np.int64)) * self.context_length
            yield self._gather(starts, device)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_tokens={self.num_tokens}, context_length={self.context_length}, "
            f"dtype={self.ids.dtype})"
        )


class CharDataset(LanguageModelingDataset):
    """A :class:`LanguageModelingDataset` over ``tokenizer.encode(text)``.

    Args:
        text: the corpus.
        tokenizer: any tokenizer with ``encode(text) -> list[int]`` (usually a ``CharTokenizer``).
        context_length: the number of input positions per window.
    """

    def __init__(self, text: str, tokenizer: Any, context_length: int) -> None:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text:
            raise ValueError(f"the text is empty; it needs at least context_length + 1 = {context_length + 1} tokens")
        self.tokenizer = tokenizer
        super().__init__(tokenizer.encode(text), context_length)
