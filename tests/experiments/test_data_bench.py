"""Tests for llm_lab/experiments/data_bench.py (`llm-lab bench data`): the plumbing, on a tiny corpus."""

from __future__ import annotations

import pytest

from llm_lab.cli import main
from llm_lab.experiments.data_bench import generate_text, run_data_benchmark


def test_generated_text_is_deterministic_and_the_size_asked(tmp_path):
    a = generate_text(tmp_path / "a.txt", 50_000, seed=1).read_text()
    b = generate_text(tmp_path / "b.txt", 50_000, seed=1).read_text()
    assert a == b and len(a.encode()) == 50_000
    assert a.count("\n") > 10 and len(set(a.split())) > 500


@pytest.mark.slow
def test_bench_data_measures_both_sides(tmp_path):
    rows, train = run_data_benchmark(tmp_path / "work", sizes_mb=(0.05, 0.1), workers=2, vocab_size=300,
                                     train_mb=0.05, log=lambda msg: None)
    assert [r.size_mb for r in rows] == [0.05, 0.1]
    for row in rows:
        assert row.tokens > 0 and row.encoder == "tiktoken" and row.prepare_s > 0 and row.tiktoken_s > 0
        assert 0 < row.prepare_rss_mb < 2000
        assert row.worker_rss_mb == 0  # tiktoken encodes in threads: no worker process
        assert row.speedup == pytest.approx(row.tiktoken_s / row.prepare_s)
        assert row.prepare_cpu_main_s > 0 and row.prepare_cpu_workers_s > 0 and row.tiktoken_cpu_s > 0
        parallel = max(row.prepare_cpu_main_s, (row.prepare_cpu_main_s + row.prepare_cpu_workers_s) / 2)
        assert row.idle_estimate == pytest.approx(row.tiktoken_cpu_s / parallel)
    assert train is not None and train.vocab_size == 300 and train.workers == 2
    assert train.ratio == pytest.approx(train.ours_s / train.hf_s)


def test_bench_data_command_writes_its_tables(tmp_path):
    out = tmp_path / "out"
    assert main(["bench", "data", "--sizes", "0.05", "--train-mb", "0", "--vocab-size", "300", "--workers", "1",
                 "--out", str(out)]) == 0
    table = (out / "results.md").read_text()
    assert "prepare MB/s" in table and "tiktoken 1-thread MB/s" in table and "load average before" in table
    assert "ratio from CPU s" in table
    assert (out / "prepare.csv").read_text().startswith("size_mb,workers,encoder")


def test_bench_data_refuses_bad_values(tmp_path):
    with pytest.raises(ValueError, match="every size positive"):
        run_data_benchmark(tmp_path, sizes_mb=(0,), log=lambda msg: None)
    with pytest.raises(FileNotFoundError, match="benchmark corpus not found"):
        run_data_benchmark(tmp_path, corpus=tmp_path / "nope.txt", sizes_mb=(1,), log=lambda msg: None)
