"""Tests for llm_lab/core/data/shards.py: sharded corpora read, train and resume exactly like single files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import llm_lab.cli
from llm_lab.cli import main
from llm_lab.core.data.datasets import PACKINGS, BosPacking, LanguageModelingDataset
from llm_lab.core.data.prepare import load_prepared, prepare_corpus
from llm_lab.core.data.shards import ShardedIds
from llm_lab.core.tokenization import CharTokenizer, SubwordTokenizer
from llm_lab.core.train.metrics import read_metrics

TINY = {
    "model": {"context_length": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
    "train": {"batch_size": 4, "max_steps": 6, "warmup_steps": 2, "eval_interval": 3, "eval_batches": 2,
              "log_interval": 1, "device": "cpu", "precision": "fp32", "peak_flops": 1e12},
    "tokenizer": {"type": "char"},
}


def test_sharded_ids_index_like_one_array():
    whole = np.arange(50, dtype=np.uint16)
    sharded = ShardedIds([whole[:7], whole[7:20], whole[20:21], whole[21:]])
    assert len(sharded) == sharded.size == 50 and sharded.dtype == np.uint16 and int(sharded.max()) == 49
    for sl in (slice(0, 50), slice(5, 9), slice(6, 22), slice(20, 21), slice(48, 60), slice(30, 30)):
        assert np.asarray(sharded[sl]).tolist() == whole[sl].tolist()
    positions = np.array([[0, 6, 7, 8], [19, 20, 21, 49]])
    assert np.array_equal(sharded[positions], whole[positions])
    assert sharded[-1] == 49 and sharded[20] == 20
    with pytest.raises(IndexError):
        sharded[np.array([50])]


@pytest.fixture
def text(tmp_path, small_text) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(small_text)
    return path


def test_a_sharded_corpus_holds_the_same_ids(tmp_path, text):
    tokenizer = CharTokenizer.from_text(text.read_text())
    prepare_corpus(tokenizer, [text], tmp_path / "one", progress=False)
    meta = prepare_corpus(tokenizer, [text], tmp_path / "shards", progress=False, shard_tokens=97)
    train, val, _ = load_prepared(tmp_path / "shards")
    one_train, one_val, _ = load_prepared(tmp_path / "one")
    assert isinstance(train, ShardedIds) and len(train.shards) > 3
    assert np.array_equal(np.asarray(train), one_train) and np.array_equal(np.asarray(val), one_val)
    names = [f["file"] for f in meta["splits"]["train"]]
    assert names[:2] == ["train-00000.bin", "train-00001.bin"] and meta["splits"]["val"][0]["file"] == "val-00000.bin"
    assert all(f["tokens"] == 97 for f in meta["splits"]["train"][:-1])
    assert sorted(meta["files"]) == sorted(p.relative_to(tmp_path / "shards").as_posix()
                                           for p in (tmp_path / "shards").rglob("*") if p.is_file()
                                           and p.name != "meta.json")
    assert not (tmp_path / "shards" / "train.bin").exists()


def test_a_damaged_shard_is_named(tmp_path, text):
    tokenizer = CharTokenizer.from_text(text.read_text())
    prepare_corpus(tokenizer, [text], tmp_path / "s", progress=False, shard_tokens=97)
    shard = tmp_path / "s" / "train-00001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"train-00001.bin holds 192 bytes but meta.json promises 97 uint16 tokens"):
        load_prepared(tmp_path / "s")


@pytest.fixture
def only_train(monkeypatch):
    monkeypatch.setattr(llm_lab.cli, "_COMMAND_MODULES", ("train",))


def _losses(run: Path) -> list[tuple[str, str]]:
    return [(r["train_loss"], r["val_loss"]) for r in read_metrics(run / "metrics.csv")]


def test_a_sharded_corpus_trains_and_resumes_to_the_same_losses(tmp_path, text, only_train):
    tokenizer = CharTokenizer.from_text(text.read_text())
    prepare_corpus(tokenizer, [text], tmp_path / "one", progress=False)
    prepare_corpus(tokenizer, [text], tmp_path / "shards", progress=False, shard_tokens=61)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    for name in ("one", "shards"):
        assert main(["train", "--config", str(config), "--data", str(tmp_path / name), "--out",
                     str(tmp_path / f"run-{name}"), "--quiet"]) == 0
    assert _losses(tmp_path / "run-one") == _losses(tmp_path / "run-shards")
    assert len(_losses(tmp_path / "run-one")) == 6
    # stopped at step 3 and resumed: the same losses as the uninterrupted run
    half = tmp_path / "run-half"
    common = ["--data", str(tmp_path / "shards"), "--out", str(half), "--quiet"]
    assert main(["train", "--config", str(config), *common, "--set", "train.max_steps=3"]) == 0
    assert main(["train", *common, "--resume", "--set", "train.max_steps=6"]) == 0
    assert [row[0] for row in _losses(half)] == [row[0] for row in _losses(tmp_path / "run-one")]


def test_bos_packing_starts_every_window_at_a_document(tmp_path):
    """Documents of 20-30 ids separated by eot: every drawn window begins with eot (or at position 0)."""
    rng = np.random.default_rng(0)
    eot = 99
    stream = []
    for _ in range(40):
        stream += ([eot] if stream else []) + rng.integers(0, 90, rng.integers(20, 31)).tolist()
    ids = np.array(stream, dtype=np.uint16)
    starts = BosPacking.window_starts(ids, 8, eot)
    assert starts[0] == 0 and all(ids[s] == eot for s in starts[1:])
    assert len(starts) == 40 and starts.max() <= ids.size - 9
    import torch

    data = LanguageModelingDataset(ids, 8, starts)
    x, y = data.get_batch(64, torch.Generator().manual_seed(0))
    firsts = set(x[:, 0].tolist())
    assert firsts <= {eot, int(ids[0])}
    assert PACKINGS["contiguous"].window_starts(ids, 8, eot) is None
    with pytest.raises(ValueError, match="data.packing 'bos' starts windows at end-of-text tokens"):
        BosPacking.window_starts(ids, 8, None)


def test_bos_packing_in_a_run(tmp_path, small_text, only_train):
    docs = [small_text[i : i + 300] for i in range(0, len(small_text), 300)]
    bpe = SubwordTokenizer.train(docs, 300)
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prepare_corpus(bpe, [jsonl], tmp_path / "prepared", progress=False)
    config = tmp_path / "bos.json"
    config.write_text(json.dumps(TINY | {"tokenizer": {"type": "bpe", "vocab_size": 300},
                                         "data": {"packing": "bos"}}))
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--data", str(tmp_path / "prepared"), "--out", str(run),
                 "--quiet"]) == 0
    assert json.loads((run / "run.json").read_text())["data"]["packing"] == "bos"
    config.write_text(json.dumps(TINY | {"data": {"packing": "rows"}}))
    assert main(["train", "--config", str(config), "--data", str(tmp_path / "prepared"), "--out",
                 str(tmp_path / "r2"), "--quiet"]) == 2


@pytest.mark.slow
def test_a_killed_sharded_prepare_with_workers_leaves_the_old_corpus(tmp_path):
    """SIGKILL a sharded ``data prepare --workers 2 --overwrite`` at different moments: the corpus at the path
    always loads whole, old or new, and no worker process outlives the kill."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "corpus"
    old = tmp_path / "old.txt"
    old.write_text("abc\n" * 50_000)
    new = tmp_path / "new.txt"
    new.write_text("cba\n" * 2_000_000)
    prepare_corpus(CharTokenizer.from_text("abc\n"), [old], out, progress=False, shard_tokens=30_000)
    command = [sys.executable, "-m", "llm_lab", "data", "prepare", "--tokenizer", str(out / "tokenizer"),
               "--input", str(new), "--out", str(out), "--overwrite", "--quiet", "--workers", "2",
               "--shard-tokens", "1000000"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    outcomes = set()
    for delay in (0.4, 0.9, 1.5, 2.2):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        workers = children.read_text().split() if children.exists() else []
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        train, val, meta = load_prepared(out)
        first = np.asarray(train[:4]).tolist()
        assert first in ([1, 2, 3, 0], [3, 2, 1, 0]), first  # "\n" a b c are ids 0 1 2 3
        outcomes.add("new" if first == [3, 2, 1, 0] else "old")
        assert train.size + val.size == (200_000 if first == [1, 2, 3, 0] else 8_000_000)
        time.sleep(0.5)
        assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()
                    and "llm_lab" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
    assert "old" in outcomes
    subprocess.run(command, env=env, check=True)
    assert np.asarray(load_prepared(out)[0][:4]).tolist() == [3, 2, 1, 0]


def test_shards_are_uint32_when_the_vocabulary_needs_it(tmp_path):
    class WideTokenizer:  # ids = bytes + 69,000: a vocabulary past uint16
        vocab_size = 69_257
        eot_token_id = None

        def encode(self, text):
            return [b + 69_000 for b in text.encode()]

        def save(self, directory):
            Path(directory).mkdir(parents=True, exist_ok=True)

    (tmp_path / "t.txt").write_text("abcdefghij" * 3)
    meta = prepare_corpus(WideTokenizer(), [tmp_path / "t.txt"], tmp_path / "o", val_fraction=0.0, progress=False,
                          shard_tokens=7)
    train, _, _ = load_prepared(tmp_path / "o")
    assert meta["dtype"] == "uint32" and isinstance(train, ShardedIds) and train.dtype == np.uint32
    assert np.asarray(train).tolist() == [b + 69_000 for b in b"abcdefghij" * 3]
    assert [f["tokens"] for f in meta["splits"]["train"]] == [7, 7, 7, 7, 2]
    assert (tmp_path / "o" / "train-00004.bin").stat().st_size == 2 * 4
