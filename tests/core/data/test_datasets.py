"""Tests for llm_lab/core/data/datasets.py: windows, random batches, evaluation batches, memmaps, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_lab.core.data import CharDataset, LanguageModelingDataset
from llm_lab.core.tokenization import CharTokenizer


class _OrdTokenizer:
    """A stand-in tokenizer: one id per character, its code point (enough for CharDataset's contract)."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_len_and_getitem_shift_by_one():
    """ids 0..9, T=4: windows start at 0..5 (10 - 4 = 6 of them); window i is x = i..i+3, y = i+1..i+4."""
    ds = LanguageModelingDataset(list(range(10)), context_length=4)
    assert len(ds) == 6
    x, y = ds[2]
    assert x.tolist() == [2, 3, 4, 5]
    assert y.tolist() == [3, 4, 5, 6]
    assert x.dtype == torch.int64 and y.dtype == torch.int64
    assert ds[-1][1].tolist() == [6, 7, 8, 9]  # the last window ends on the last id
    with pytest.raises(IndexError, match="out of range"):
        ds[6]


@pytest.mark.parametrize("kind", ["list", "int64", "uint16", "uint32", "memmap"])
def test_same_windows_from_every_source(kind, tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 300, size=500)
    if kind == "list":
        source = ids.tolist()
    elif kind == "memmap":
        ids.astype(np.uint16).tofile(tmp_path / "t.bin")
        source = np.memmap(tmp_path / "t.bin", dtype=np.uint16, mode="r")
    else:
        source = ids.astype(kind)
    ds = LanguageModelingDataset(source, context_length=16)
    x, y = ds.get_batch(8, _gen(3))
    ref = LanguageModelingDataset(ids, context_length=16)
    x_ref, y_ref = ref.get_batch(8, _gen(3))
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    assert x.dtype == torch.int64


def test_memmap_is_not_copied(tmp_path):
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "t.bin")
    mm = np.memmap(tmp_path / "t.bin", dtype=np.uint16, mode="r")
    ds = LanguageModelingDataset(mm, context_length=8)
    assert ds.ids is mm
    from_bin = LanguageModelingDataset.from_bin(tmp_path / "t.bin", 8, "uint16")
    assert isinstance(from_bin.ids, np.memmap)
    assert from_bin[990][1].tolist() == list(range(991, 999))


def test_get_batch_matches_windows_and_is_driven_only_by_generator():
    ids = np.arange(1000) % 251  # distinct neighbours, so a wrong shift would show
    ds = LanguageModelingDataset(ids, context_length=32)
    g = _gen(7)
    state = g.get_state()
    torch.manual_seed(123)  # the global RNG must not matter
    x1, y1 = ds.get_batch(16, g)
    assert x1.shape == (16, 32) and y1.shape == (16, 32)
    # Every row is some window ds[i]: y is x shifted by one over the stream.
    for row_x, row_y in zip(x1, y1, strict=True):
        start = int(np.flatnonzero(ids[:-32] == int(row_x[0]))[0])
        wx, wy = ds[start]
        assert torch.equal(row_x, wx) and torch.equal(row_y, wy)
    # Restoring the generator state replays the same batch (what exact resume relies on).
    g.set_state(state)
    torch.manual_seed(999)
    x2, y2 = ds.get_batch(16, g)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # ...and the next draw differs.
    x3, _ = ds.get_batch(16, g)
    assert not torch.equal(x1, x3)


def test_get_batch_covers_every_start():
    """len(ids)=12, T=4: 8 possible starts; 400 draws of 8 hit all of them, including the last (start 7)."""
    ds = LanguageModelingDataset(list(range(12)), context_length=4)
    x, y = ds.get_batch(400, _gen(0))
    assert sorted(set(x[:, 0].tolist())) == list(range(8))
    assert int(y.max()) == 11


def test_eval_batches_contiguous_non_overlapping_and_deterministic():
    """ids 0..22 (23 tokens), T=5: (23 - 1) // 5 = 4 windows starting at 0, 5, 10, 15; batch 3 -> sizes 3, 1."""
    ds = LanguageModelingDataset(list(range(23)), context_length=5)
    assert ds.num_eval_windows == 4
    batches = list(ds.eval_batches(3))
    assert [b[0].shape[0] for b in batches] == [3, 1]
    xs = torch.cat([b[0] for b in batches])
    ys = torch.cat([b[1] for b in batches])
    assert xs[:, 0].tolist() == [0, 5, 10, 15]
    assert xs.flatten().tolist() == list(range(20))  # every token predicted once, no overlap
    assert ys.flatten().tolist() == list(range(1, 21))
    again = list(ds.eval_batches(3))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again, strict=True))
    assert len(list(ds.eval_batches(1, max_batches=2))) == 2


def test_eval_batches_sharded_ranks_cover_the_same_windows():
    ds = LanguageModelingDataset(list(range(200)), context_length=4)
    single = [b[0] for b in ds.eval_batches(5, max_batches=7)]
    shards = [[b[0] for b in ds.eval_batches(5, max_batches=7, rank=r, world_size=3)] for r in range(3)]
    assert [len(s) for s in shards] == [3, 2, 2]
    merged = [shards[i % 3][i // 3] for i in range(7)]
    assert all(torch.equal(a, b) for a, b in zip(single, merged, strict=True))


def test_char_dataset_is_a_dataset_over_encode():
    ds = CharDataset("hello world", _OrdTokenizer(), context_length=3)
    assert len(ds) == 8
    x, y = ds[0]
    assert x.tolist() == [ord("h"), ord("e"), ord("l")]
    assert y.tolist() == [ord("e"), ord("l"), ord("l")]


def test_char_dataset_with_the_project_char_tokenizer(small_text):
    tok = CharTokenizer.from_text(small_text)
    ds = CharDataset(small_text, tok, context_length=16)
    x, y = ds[5]
    assert tok.decode(x.tolist()) == small_text[5:21]
    assert tok.decode(y.tolist()) == small_text[6:22]


@pytest.mark.parametrize(
    ("ids", "context_length", "match"),
    [
        ([], 4, r"empty; it needs at least context_length \+ 1 = 5 tokens"),
        ([1, 2, 3, 4], 4, r"has 4 tokens but context_length 4 needs at least 5"),
        ([1, 2, 3], 0, r"context_length must be a positive int"),
        ([[1, 2], [3, 4]], 1, r"1-D"),
        (np.array([0.5, 1.5, 2.5]), 1, r"integers"),
        ([3, -1, 2], 1, r"non-negative"),
    ],
)
def test_bad_input(ids, context_length, match):
    with pytest.raises(ValueError, match=match):
        LanguageModelingDataset(ids, context_length)


def test_bad_text_and_batch_arguments():
    with pytest.raises(ValueError, match=r"text is empty"):
        CharDataset("", _OrdTokenizer(), 4)
    with pytest.raises(ValueError, match=r"has 3 tokens but context_length 8 needs at least 9"):
        CharDataset("abc", _OrdTokenizer(), 8)
    ds = LanguageModelingDataset(list(range(10)), 2)
    with pytest.raises(ValueError, match="batch_size"):
        ds.get_batch(0, _gen())
    with pytest.raises(TypeError, match="torch.Generator"):
        ds.get_batch(2, 0)
    with pytest.raises(ValueError, match="rank"):
        next(ds.eval_batches(2, rank=2, world_size=2))


def test_check_vocab_size_finds_the_largest_id_of_a_memmap(tmp_path):
    """One id of 70 000 (a uint32 file) anywhere in the stream is outside a vocabulary of 70 000, not of 70 001."""
    ids = np.arange(1000, dtype=np.uint32) % 50
    ids[617] = 70_000
    ids.tofile(tmp_path / "train.bin")
    ds = LanguageModelingDataset.from_bin(tmp_path / "train.bin", 8, dtype="uint32")
    assert ds.max_id == 70_000
    ds.check_vocab_size(70_001)
    with pytest.raises(
        ValueError,
        match=r"holds id 70000, outside the model's vocabulary: ids must lie in \[0, vocab_size=70000\); was it "
        r"prepared with another tokenizer\?",
    ):
        ds.check_vocab_size(70_000)


def test_from_bin_errors_name_the_file(tmp_path):
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.bin: the token stream is empty"):
        LanguageModelingDataset.from_bin(tmp_path / "empty.bin", 4)
    (tmp_path / "odd.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(ValueError, match=r"odd.bin holds 3 bytes, not a whole number of uint16"):
        LanguageModelingDataset.from_bin(tmp_path / "odd.bin", 1, "uint16")
    np.arange(6, dtype=np.uint32).tofile(tmp_path / "short.bin")
    with pytest.raises(ValueError, match=r"short.bin: the token stream has 6 tokens but context_length 8"):
        LanguageModelingDataset.from_bin(tmp_path / "short.bin", 8, "uint32")
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        LanguageModelingDataset.from_bin(tmp_path / "missing.bin", 4)
    with pytest.raises(ValueError, match=r"dtype 'uint12' is not a numpy dtype; use 'uint16' or 'uint32'"):
        LanguageModelingDataset.from_bin(tmp_path / "short.bin", 2, "uint12")
    with pytest.raises(ValueError, match=r"dtype must be an integer dtype such as 'uint16' or 'uint32', got float32"):
        LanguageModelingDataset.from_bin(tmp_path / "short.bin", 2, "float32")
