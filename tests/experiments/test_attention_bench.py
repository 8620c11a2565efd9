"""The attention micro-benchmark (llm_lab/experiments/attention_bench.py) on a tiny setting."""

from __future__ import annotations

import pytest

from llm_lab.experiments.attention_bench import (
    CSV_COLUMNS,
    AttentionBenchConfig,
    available_backends,
    quick_attention_config,
    run_attention_benchmark,
    write_attention_results,
)
from llm_lab.experiments.tables import read_csv

from .conftest import as_float


def test_quick_benchmark_writes_sensible_csv_md_and_png(tmp_path, png_ok):
    config = quick_attention_config()
    rows = run_attention_benchmark(config, progress=False)
    backends = available_backends("cpu", config.dtypes)
    assert backends[:3] == ["reference", "sdpa", "chunked"] and "sdpa_math" in backends
    expected = len(backends) * len(config.dtypes) * len(config.modes) * len(config.seq_lens) * len(config.head_dims)
    assert len(rows) == expected

    paths = write_attention_results(rows, tmp_path)
    csv_rows = read_csv(paths["csv"])
    assert list(csv_rows[0]) == list(CSV_COLUMNS)
    assert len(csv_rows) == expected
    for row in csv_rows:
        assert as_float(row["time_ms"]) > 0
        assert as_float(row["peak_mem_mib"]) > 0
        # Every fast path computes the same attention as the reference.
        tolerance = 1e-5 if row["dtype"] == "float32" else 5e-2
        assert as_float(row["max_abs_diff"]) <= tolerance, row
        if row["backend"] == "reference":
            assert as_float(row["speedup_vs_reference"]) == 1.0
    # The reference materialises the (B, H, T, T) float32 scores: its forward peak holds at least that.
    B, H, T = config.batch_size, config.n_head, max(config.seq_lens)
    ref = [r for r in csv_rows if r["backend"] == "reference" and r["mode"] == "fwd" and int(r["seq_len"]) == T]
    assert all(as_float(r["peak_mem_mib"]) * 2**20 >= B * H * T * T * 4 for r in ref)

    md = paths["md"].read_text()
    assert md.startswith("# Attention benchmark") and "| reference ms |" in md
    png_ok(paths["png"])


def test_explicit_backends_and_memory_off():
    config = AttentionBenchConfig(
        seq_lens=(16,), head_dims=(8,), dtypes=("float32",), modes=("fwd",), backends=("sdpa",), batch_size=1,
        n_head=1, repeats=1, warmup=0, min_time_s=0.0, measure_memory=False,
    )
    rows = run_attention_benchmark(config, progress=False)
    assert [r["backend"] for r in rows] == ["reference", "sdpa"]  # the reference is always there to compare to
    assert all(r["peak_mem_mib"] is None for r in rows)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seq_lens": ()}, "seq_lens must be a non-empty list"),
        ({"head_dims": (0,)}, "head_dims must be a non-empty list of positive integers"),
        ({"dtypes": ("float8",)}, "unknown dtype"),
        ({"modes": ("bwd",)}, "unknown mode"),
        ({"backends": ("flash3",)}, "unknown backend"),
        ({"batch_size": 0}, "batch_size must be positive"),
        ({"device": "gpu0"}, "device 'gpu0' is not a device name; use cpu, cuda, cuda:N or mps"),
    ],
)
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AttentionBenchConfig(**kwargs)
