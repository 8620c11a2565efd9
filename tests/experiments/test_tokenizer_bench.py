"""The tokenizer benchmark runs end to end on a small file (timings themselves are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llm_lab.experiments.tokenizer_bench import format_table, run_tokenizer_benchmark

pytest.importorskip("tokenizers")
pytest.importorskip("tiktoken")

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_rows_and_table(tmp_path, small_text):
    data = tmp_path / "corpus.txt"
    data.write_text(small_text * 3, encoding="utf-8")
    rows = run_tokenizer_benchmark(data, [300], repeats=1, log=lambda msg: None)
    (row,) = rows
    assert row.vocab_size == 300 and row.ids_identical and row.n_tokens > 0
    assert row.train_ratio > 0 and row.encode_cold_ratio > 0
    table = format_table(rows)
    assert "   300 |" in table and "yes" in table
    with pytest.raises(FileNotFoundError, match="benchmark data not found"):
        run_tokenizer_benchmark(tmp_path / "missing.txt", [300])


@pytest.mark.slow
def test_bench_script_runs(tmp_path, small_text):
    data = tmp_path / "corpus.txt"
    data.write_text(small_text, encoding="utf-8")
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "bench_tokenizer.py"), "--data", str(data),
         "--vocab-sizes", "280", "--repeats", "1", "--json", str(tmp_path / "rows.json")],
        capture_output=True, text=True, timeout=300, check=True,
    )
    assert "train ours" in out.stdout and (tmp_path / "rows.json").is_file()
