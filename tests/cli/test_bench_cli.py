"""`llm-lab bench env|attention|step` and the scripts that wrap them, on tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import llm_lab.cli
from llm_lab.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _only_this_command_group(monkeypatch):
    monkeypatch.setattr(llm_lab.cli, "_COMMAND_MODULES", ("bench",))


def test_bench_env_prints_report_and_writes_json(tmp_path, capsys):
    out = tmp_path / "env.json"
    assert main(["bench", "env", "--device", "cpu", "--no-compile", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dtypes that work: float32 yes" in text and "matmul peak (measured)" in text
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["matmul_peak_gflops"]["float32"] > 0


def test_bench_attention_quick(tmp_path, capsys):
    assert main(["bench", "attention", "--quick", "--modes", "fwd", "--out", str(tmp_path)]) == 0
    written = {p.name for p in tmp_path.iterdir()}
    assert written == {"attention.csv", "attention.md", "attention.png", "llm_lab_output.json"}
    text = capsys.readouterr().out
    assert "| reference ms |" in text and "fwd_bwd" not in text


def test_bench_step_quick(tmp_path, capsys):
    assert main(["bench", "step", "--quick", "--precisions", "fp32", "--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"step.csv", "step.md", "llm_lab_output.json"}
    text = capsys.readouterr().out
    assert "| baseline |" in text and "| ours     | fp32" in text and "| ours     | bf16" not in text


def test_bench_step_quick_with_muon(tmp_path, capsys):
    argv = ["bench", "step", "--quick", "--precisions", "fp32", "--optimizers", "adamw", "muon", "--no-baseline"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ours")]
    optimizers = [row.split("|")[4].strip() for row in rows]
    assert len(optimizers) == 2 and optimizers[0] == "AdamW fused" and optimizers[1].startswith("Muon, NS in ")


def test_bench_step_quick_with_sft(tmp_path, capsys):
    argv = ["bench", "step", "--quick", "--precisions", "fp32", "--no-baseline", "--sft", "--rounds", "2"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| ours SFT | fp32" in text and "note: SFT (masked loss) / plain tokens/s, fp32 compile=False" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "attention", "--quick", "--dtypes", "float8"], "unknown dtype"),
        (["bench", "step", "--quick", "--precisions", "fp8"], "unknown precision"),
        (["bench", "step", "--quick", "--optimizers", "sgd"], "unknown optimizer(s) ['sgd']; choose from: adamw, muon"),
        (["bench", "step", "--config", "missing.json"], "config file missing.json does not exist"),
        (["bench", "env", "--device", "foo", "--no-peak"], "device 'foo' is not a device name"),
        (["bench", "attention", "--quick", "--device", "gpu"], "device 'gpu' is not a device name"),
        (["bench", "step", "--quick", "--device", "cuda:99"], "device 'cuda:99': "),
    ],
)
def test_bad_input_is_a_one_line_error(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm-lab: error: ") and message in err and err.count("\n") == 1


def test_a_count_out_of_range_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "step", "--quick", "--rounds", "0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.endswith(
        "llm-lab bench step: error: argument --rounds: expected an integer from 1 to 1,000 (a median settles within "
        "a few dozen), got 0\n"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("p1_env_sanity.py", ["--no-compile", "--no-peak"], "bf16 matrix units"),
        ("p1_bench_attention.py", ["--quick", "--no-memory"], "| sdpa ms |"),
        ("p1_bench_step.py", ["--quick", "--precisions", "fp32"], "x baseline"),
    ],
)
def test_scripts_wrap_the_cli(script, args, expected, tmp_path):
    extra = ["--out", str(tmp_path / "out")] if script != "p1_env_sanity.py" else []  # a sub-folder: not the cwd
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args, *extra],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
