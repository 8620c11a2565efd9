"""scripts/bench_generate.py --quick runs end to end and reports consistent numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "bench_generate.py"


@pytest.mark.slow
def test_quick_benchmark_prints_the_tables_and_writes_json(tmp_path):
    pytest.importorskip("transformers")
    out_json = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out_json)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "greedy throughput" in proc.stdout and "per-token decode time" in proc.stdout
    results = json.loads(out_json.read_text())
    assert [row["batch"] for row in results["throughput"]] == [1, 2]
    for row in results["throughput"]:
        # Same weights, both greedy: the two implementations must produce the same tokens.
        assert row["same_tokens"] is True
        assert row["ours_tokens_per_second"] > 0 and row["hf_tokens_per_second"] > 0
        assert row["matmul_only_tokens_per_second"] > 0
        assert row["ratio"] == pytest.approx(row["ours_tokens_per_second"] / row["hf_tokens_per_second"])
    assert [row["context"] for row in results["per_token"]] == [8, 64]
    assert results["per_token"][0]["ours_vs_shortest"] == 1.0
