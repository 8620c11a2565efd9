"""Encoding a stream of text pieces into ids, in parallel, in input order, with bounded memory.

Two encoders give the same ids; :func:`choose_encoder` picks one:

    name       what encodes                                      when
    tiktoken   ``tiktoken`` (Rust) with the tokenizer's ranks      a byte-level BPE tokenizer whose merges tiktoken
                                                                 applies identically (checked, then verified on
                                                                 the corpus's first batch); tiktoken installed
    llm-lab    the tokenizer's own ``encode``                    always: the fallback and the reference

:func:`encode_batches` hands batches of pieces to ``workers`` parallel encoders and yields the results in the order
the batches were read. An encoder that releases Python's GIL while it works (tiktoken's Rust core does) runs in
threads of this process: no process start-up, no text or ids copied between processes. The pure-Python encoder
holds the GIL, so it runs in worker processes (each builds its encoder once). At most ``2 * workers`` batches are
in flight either way, so memory stays bounded whatever the corpus size.
"""

from __future__ import annotations

import array
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np

from llm_lab.utils.parallel import map_in_order, worker_processes

__all__ = ["ENCODERS", "LlmLabEncoder", "TiktokenEncoder", "choose_encoder", "encode_batches"]

#: One batch: ``(text, eot_before)`` per piece (``eot_before``: a document starts here and another came before).
Batch = list[tuple[str, bool]]


class LlmLabEncoder:
    """Encode with the tokenizer's own ``encode`` (the reference).

    Args:
        tokenizer: any project tokenizer (``encode``, ``vocab_size``, ``eot_token_id``).
        dtype: the dtype of the ids written.
    """

    name: ClassVar[str] = "llm-lab"
    #: Whether encoding lets other Python threads run (then parallel encoders are threads, not processes).
    releases_gil: ClassVar[bool] = False

    def __init__(self, tokenizer: Any, dtype: np.dtype) -> None:
        self.tokenizer = tokenizer
        self.dtype = np.dtype(dtype)
        self.vocab_size = int(tokenizer.vocab_size)
        self.eot = tokenizer.eot_token_id

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def encode_array(self, text: str) -> np.ndarray:
        """The ids of ``text`` as a uint32 array (checked to fit the vocabulary by :meth:`__call__`)."""
        ids = self.encode_text(text)
        try:
            flat = array.array("I", ids)  # C unsigned ints: list -> array is one C loop, several times numpy's speed
        except OverflowError:  # below 0 or above 2**32 - 1
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise ValueError(f"the tokenizer produced id {bad} outside its vocabulary of {self.vocab_size}") from None
        return np.frombuffer(flat, dtype=np.uint32) if flat.itemsize == 4 else np.array(ids, dtype=np.uint32)

    def __call__(self, batch: Batch) -> tuple[np.ndarray, list[int]]:
        """The ids of a batch (an end-of-text id before each piece marked so) and each piece's token count."""
        parts: list[np.ndarray] = []
        counts: list[int] = []
        eot = None if self.eot is None else np.array([self.eot], dtype=np.uint32)
        for text, eot_before in batch:
            if eot_before and eot is not None:
                parts.append(eot)
            ids = self.encode_array(text)
            parts.append(ids)
            counts.append(len(ids))
        ids_array = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint32)
        if ids_array.size and int(ids_array.max()) >= self.vocab_size:
            raise ValueError(f"the tokenizer produced id {int(ids_array.max())} outside its vocabulary of "
                             f"{self.vocab_size}")
        return ids_array.astype(self.dtype), counts


class TiktokenEncoder(LlmLabEncoder):
    """Encode with ``tiktoken`` over the tokenizer's ranks (``SubwordTokenizer.to_tiktoken``); same ids, faster."""

    name: ClassVar[str] = "tiktoken"
    releases_gil: ClassVar[bool] = True  # its Rust core encodes with the GIL released

    def __init__(self, tokenizer: Any, dtype: np.dtype) -> None:
        super().__init__(tokenizer, dtype)
        self._encoding = tokenizer.to_tiktoken()
        # tiktoken 0.8+ hands the ids over as one buffer, without building a list of Python ints under the GIL; but
        # some versions (0.9) ignore allowed_special there and turn special-token text into the special id, so the
        # buffer route is used only where it gives encode_ordinary's ids on text that holds every special token
        self._to_numpy = getattr(self._encoding, "encode_to_numpy", None)
        if self._to_numpy is not None:
            probe = "a " + " b ".join(self._encoding.special_tokens_set) + " c"
            if self._to_numpy(probe, allowed_special=set(), disallowed_special=()).tolist() != (
                self._encoding.encode_ordinary(probe)
            ):
                self._to_numpy = None

    @staticmethod
    def _has_lone_surrogates(text: str) -> bool:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # tiktoken would replace them, ours keeps their bytes
            return True
        return False

    def encode_text(self, text: str) -> list[int]:
        if self._has_lone_surrogates(text):
            return self.tokenizer.encode(text)
        return self._encoding.encode_ordinary(text)

    def encode_array(self, text: str) -> np.ndarray:
        if self._to_numpy is None or self._has_lone_surrogates(text):
            return super().encode_array(text)
        # no special token allowed and none refused: special-token text is ordinary text, as in encode_ordinary
        return self._to_numpy(text, allowed_special=set(), disallowed_special=())

    @staticmethod
    def applies_to(tokenizer: Any) -> str | None:
        """Why tiktoken cannot encode for ``tokenizer`` exactly, or None when it can."""
        if not hasattr(tokenizer, "to_tiktoken") or getattr(tokenizer, "pattern_name", None) not in ("gpt2", "gpt4"):
            return "not a byte-level BPE tokenizer with the GPT-2 or GPT-4 pattern"
        try:
            import tiktoken  # noqa: F401
        except ImportError:
            return "tiktoken is not installed"
        # tiktoken merges the adjacent pair whose joined bytes have the lowest id; that is our rule (the pair
        # learned first) when every merge's result has a higher id than the merges before it.
        vocab = tokenizer.vocab
        merged_ids = [vocab[left + right] for left, right in tokenizer.merges]
        if any(b <= a for a, b in zip(merged_ids, merged_ids[1:], strict=False)):
            return "its merges are not in id order, so tiktoken would merge differently"
        return None


#: Every encoder, by name: the only list of them.
ENCODERS: dict[str, type[LlmLabEncoder]] = {cls.name: cls for cls in (LlmLabEncoder, TiktokenEncoder)}


def choose_encoder(tokenizer: Any, dtype: np.dtype, choice: str = "auto", sample: str = "") -> LlmLabEncoder:
    """The encoder for ``tokenizer``: ``"auto"`` takes tiktoken where it gives our ids (see the module table), and
    checks that on ``sample`` (a stretch of the corpus) against the reference before trusting it.

    Raises:
        ValueError: an unknown ``choice``, or ``"tiktoken"`` asked for a tokenizer it cannot encode exactly.
    """
    if choice not in ("auto", *ENCODERS):
        raise ValueError(f"encoder must be 'auto' or one of {sorted(ENCODERS)}, got {choice!r}")
    if choice == "llm-lab":
        return LlmLabEncoder(tokenizer, dtype)
    reason = TiktokenEncoder.applies_to(tokenizer)
    if reason is not None:
        if choice == "tiktoken":
            raise ValueError(f"encoder 'tiktoken' cannot encode for this tokenizer: {reason}")
        return LlmLabEncoder(tokenizer, dtype)
    encoder = TiktokenEncoder(tokenizer, dtype)
    if sample and encoder.encode_text(sample) != tokenizer.encode(sample):
        message = "tiktoken's ids differ from the tokenizer's own on this corpus"
        if choice == "tiktoken":
            raise ValueError(f"encoder 'tiktoken': {message}")
        warnings.warn(f"{message}; encoding with llm-lab's encoder instead", stacklevel=2)
        return LlmLabEncoder(tokenizer, dtype)
    return encoder


_worker_encoder: LlmLabEncoder | None = None


def _start_worker(encoder: LlmLabEncoder) -> None:
    global _worker_encoder
    _worker_encoder = encoder


def _encode_in_worker(batch: Batch) -> tuple[np.ndarray, list[int]]:
    assert _worker_encoder is not None
    return _worker_encoder(batch)


def encode_batches(
    batches: Iterable[Batch], encoder: LlmLabEncoder, workers: int = 1
) -> Iterator[tuple[np.ndarray, list[int]]]:
    """Encode ``batches`` in order: in this thread (``workers=1``), or ``workers`` at a time in threads (an encoder
    that releases the GIL) or in worker processes (one that does not).

    Yields:
        Per batch, ``(ids, token counts per piece)``, in the order the batches came.
    """
    if workers <= 1:
        for batch in batches:
            yield encoder(batch)
        return
    pool: Executor
    if encoder.releases_gil:
        pool, encode = ThreadPoolExecutor(workers, thread_name_prefix="llm-lab-encode"), encoder
    else:
        pool, encode = worker_processes(workers, _start_worker, (encoder,)), _encode_in_worker
    yield from map_in_order(pool, encode, batches, 2 * workers)
