"""scripts/bench_generate.py (`llm-lab bench generate`) --quick runs end to end with consistent numbers; bad
settings are refused."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_lab.experiments.generate_bench import BenchSettings

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_generate.py"


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
        assert row["matmul_only_tokens_per_second"] > 0 and row["kernels_only_tokens_per_second"] > 0
        assert row["kernels_roofline_fraction"] == pytest.approx(
            row["kernels_only_tokens_per_second"] / row["batch"] / results["roofline"]["tokens_per_second"]
        )
        assert row["ratio"] == pytest.approx(row["ours_tokens_per_second"] / row["hf_tokens_per_second"])
    assert [row["context"] for row in results["per_token"]] == [8, 64]
    assert results["per_token"][0]["ours_vs_shortest"] == 1.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"repeats": 0}, "repeats must be a positive integer, got 0"),
        ({"new_tokens": True}, "new_tokens must be a positive integer, got True"),
        ({"batch_sizes": ()}, r"batch_sizes must be a non-empty list of positive integers, got \(\)"),
        ({"contexts": (8, -1)}, r"contexts must be a non-empty list of positive integers, got \(8, -1\)"),
        ({"n_embd": 65}, "n_embd=65 must be divisible by n_head=2"),
        ({"contexts": (8, 91)}, "n_positions=96 is too small for a context of 91 plus 6 new tokens"),
        ({"new_tokens": 100}, "n_positions=96 is too small for a 4-token prompt plus 100 new tokens"),
        ({"device": "tpu"}, "device 'tpu'"),
    ],
)
def test_bad_settings_are_refused_before_any_model_is_built(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(BenchSettings.quick(), **changes)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--repeats", "0"], "argument --repeats: expected an integer from 1 to 1,000 (a median settles within a few "
         "dozen), got 0"),
        # 1e11 repeats ran until killed: every count flag of the benchmarks has a cap
        (["--repeats", "100000000000"], "argument --repeats: expected an integer from 1 to 1,000 (a median settles "
         "within a few dozen), got 100,000,000,000"),
        (["--batch-sizes", "1,x"], "expected comma-separated integers such as 1,8; in '1,x', expected an integer "
         "from 1 to 1,024, got 'x'"),
        (["--contexts", "64,10000000"], "argument --contexts: expected comma-separated integers such as 1,8; in "
         "'64,10000000', expected an integer from 1 to 65,536 (tokens per prompt), got 10,000,000"),
        (["--threads", "0"], "--threads: threads must be 'auto' or a positive integer, got 0"),
    ],
)
def test_script_bad_arguments_are_one_line_and_exit_2(argv, message, capsys):
    spec = importlib.util.spec_from_file_location("bench_generate", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(script.main(["--quick", *argv]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_unknown_decode_dtype_is_refused_before_any_model_is_built():
    with pytest.raises(ValueError, match="unknown decode dtype 'int4'; choose one of: auto, fp32, bf16, int8"):
        dataclasses.replace(BenchSettings.quick(), dtype="int4")


@pytest.mark.slow
def test_quick_int8_benchmark_reports_agreement_and_the_roofline(tmp_path):
    pytest.importorskip("transformers")
    from llm_lab.experiments.generate_bench import run_benchmark

    results = run_benchmark(dataclasses.replace(BenchSettings.quick(), dtype="int8"))
    roof = results["roofline"]
    assert results["settings"]["dtype"] == "int8"
    # The decode copy's int8 weights: one byte per weight of every linear layer, plus scales and biases.
    linear_weights = 2 * (64 * 64 * 3 + 64 * 64 + 2 * 64 * 256) + 64 * 128
    assert linear_weights <= roof["weight_bytes_per_token"] < linear_weights * 1.2
    assert roof["tokens_per_second"] == pytest.approx(roof["read_bandwidth_bytes_per_second"] / linear_weights, rel=0.2)
    for row in results["throughput"]:
        assert 0 <= row["token_agreement"] <= 1
        assert row["roofline_fraction"] == pytest.approx(
            row["ours_tokens_per_second"] / row["batch"] / roof["tokens_per_second"]
        )
