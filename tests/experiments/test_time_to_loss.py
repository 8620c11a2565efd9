"""Time-to-loss benchmark: reading the target off metrics.csv, medians and ratios, and a --quick run end to end."""

import json
import math
from pathlib import Path

import pytest

from llm_lab.cli import run_command
from llm_lab.core.train.run import RunConfig
from llm_lab.experiments.time_to_loss import (
    TimeToLossRun,
    first_eval_at_or_below,
    format_summary,
    run_time_to_loss,
    summarize,
)

REPO = Path(__file__).resolve().parents[2]
BASELINE = REPO / "configs" / "shakespeare_char.json"
FAST = REPO / "configs" / "shakespeare_char_fast.json"
SIXTY = REPO / "configs" / "shakespeare_char_60s.json"


def main(argv: list[str]) -> int:
    """``scripts/bench_time_to_loss.py``: ``llm-lab bench time-to-loss`` under the script's name."""
    return run_command(["bench", "time-to-loss"], argv, prog="bench_time_to_loss.py")


def _row(step, val=None, elapsed=0.0):
    return {"step": str(step), "val_loss": "" if val is None else repr(val), "elapsed_s": repr(elapsed)}


def test_first_eval_at_or_below_skips_rows_without_evaluation():
    rows = [_row(10, None, 1.0), _row(20, 2.0, 2.0), _row(30, None, 3.0), _row(40, 1.88, 4.0), _row(50, 1.5, 5.0)]
    assert first_eval_at_or_below(rows, 1.88)["step"] == "40"  # equal counts as reached
    assert first_eval_at_or_below(rows, 2.5)["step"] == "20"
    assert first_eval_at_or_below(rows, 1.0) is None


def _run(name, wall, time_to_target, repeat=0):
    return TimeToLossRun(
        name=name, config=f"{name}.json", out_dir="x", repeat=repeat, wall_s=wall, overhead_s=1.0,
        time_to_target_s=time_to_target, step_at_target=None, val_at_target=None, final_val_loss=None, steps=1,
        tokens=1,
    )  # fmt: skip


def test_summary_takes_medians_and_the_ratio_of_times_to_target():
    runs = [
        _run("baseline", 100.0, 90.0), _run("fast", 30.0, 28.0),
        _run("baseline", 130.0, 120.0, 1), _run("fast", 40.0, 36.0, 1),
        _run("baseline", 110.0, 100.0, 2), _run("fast", 20.0, 19.0, 2),
    ]  # fmt: skip
    summary = summarize(runs, 1.88)
    assert summary.median_time_to_target_s == {"baseline": 100.0, "fast": 28.0}
    assert summary.median_wall_s == {"baseline": 110.0, "fast": 30.0}
    assert summary.ratio == pytest.approx(0.28) and not summary.ratio_is_upper_bound
    assert summary.wall_ratio == pytest.approx(30.0 / 110.0)
    assert summary.ratios == {"fast": pytest.approx(0.28)}


def test_added_configs_get_their_own_ratio_and_final_loss():
    runs = [_run("baseline", 100.0, 90.0), _run("fast", 30.0, 27.0), _run("sixty", 50.0, 18.0)]
    runs[2].final_val_loss = 1.65
    summary = summarize(runs, 1.88, fast="fast")
    assert summary.ratios == {"fast": pytest.approx(0.3), "sixty": pytest.approx(0.2)}
    assert summary.median_final_val_loss == {"baseline": None, "fast": None, "sixty": 1.65}
    text = format_summary(summary)
    assert "ratio (sixty / baseline time to 1.88): 0.200" in text
    assert "sixty: time to val loss 1.88: 18.0 s; process wall time 50.0 s (median); final val loss 1.6500" in text


def test_a_missed_target_counts_as_slowest_and_bounds_the_ratio():
    # Baseline missed it every time: its wall time is a lower bound, so the ratio is an upper bound.
    summary = summarize([_run("baseline", 100.0, None), _run("fast", 30.0, 25.0)], 1.88)
    assert summary.median_time_to_target_s["baseline"] is None
    assert summary.ratio == pytest.approx(0.25) and summary.ratio_is_upper_bound
    # One miss out of three: the median is the slower of the two hits.
    runs = [_run("fast", 30.0, None), _run("fast", 30.0, 20.0, 1), _run("fast", 30.0, 10.0, 2)]
    assert summarize([_run("baseline", 100.0, 80.0), *runs], 1.88).median_time_to_target_s["fast"] == 20.0
    # The fast config never got there: no ratio at all.
    assert summarize([_run("baseline", 100.0, 80.0), _run("fast", 30.0, None)], 1.88).ratio is None


@pytest.mark.slow  # two `llm-lab train` subprocesses; the summary arithmetic is tested above without them
def test_quick_run_end_to_end(tmp_path, small_text, capsys):
    data = tmp_path / "corpus.txt"
    data.write_text(small_text, encoding="utf-8")
    out = tmp_path / "bench"
    # A target every evaluation meets: the first evaluated row (step 3 of --quick) is the one reported.
    args = ["--data", str(data), "--out", str(out), "--baseline", str(BASELINE), "--fast", str(FAST)]
    args += ["--add", f"sixty={SIXTY}"]
    assert main([*args, "--quick", "--target", "100", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "baseline: time to val loss 100.0:" in text and "fast: time to val loss 100.0:" in text
    assert "ratio (fast / baseline time to 100.0):" in text
    assert "ratio (sixty / baseline time to 100.0):" in text
    summary = json.loads((out / "summary.json").read_text())
    assert [run["name"] for run in summary["runs"]] == ["baseline", "fast", "sixty"]
    for run in summary["runs"]:
        assert run["step_at_target"] == 3 and run["steps"] == 6
        # start-up and tear-down are counted: the time to target is positive and within the process time
        assert 0 < run["overhead_s"] < run["wall_s"]
        assert run["overhead_s"] < run["time_to_target_s"] <= run["wall_s"]
        assert (Path(run["out_dir"]) / "metrics.csv").is_file()
    base, fast, _ = (run["time_to_target_s"] for run in summary["runs"])
    assert math.isclose(summary["ratio"], fast / base)
    assert (out / "runs.csv").is_file() and (out / "summary.md").read_text().startswith("# Time to validation loss")


def test_bad_input_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--data .*missing.txt is not a file"):
        run_time_to_loss({"baseline": BASELINE, "fast": FAST}, tmp_path / "missing.txt", tmp_path)
    data = tmp_path / "corpus.txt"
    data.write_text("abc" * 100)
    with pytest.raises(FileNotFoundError, match=r"the fast config .*nope.json does not exist"):
        run_time_to_loss({"baseline": BASELINE, "fast": tmp_path / "nope.json"}, data, tmp_path)
    with pytest.raises(ValueError, match=r"repeats must be at least 1, got 0"):
        run_time_to_loss({"baseline": BASELINE}, data, tmp_path, repeats=0)
    with pytest.raises(ValueError, match=r"threads must be 'auto' or a positive integer, got 0"):
        run_time_to_loss({"baseline": BASELINE}, data, tmp_path, threads=0)


def test_script_errors_are_one_line_and_exit_2(tmp_path, capsys):
    argv = ["--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: --data" in err and "missing.txt is not a file" in err and "Traceback" not in err
    data = tmp_path / "corpus.txt"
    data.write_text("abc" * 100)
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(data), "--out", str(tmp_path / "out"), "--repeats", "0"])
    assert exc.value.code == 2 and "argument --repeats: expected an integer from 1 to 1,000" in capsys.readouterr().err
    assert main(["--data", str(data), "--out", str(tmp_path / "out"), "--add", "fast=x.json"]) == 2
    assert "error: --add wants a new LABEL=CONFIG" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written on a refusal


def test_fast_config_is_valid_and_evaluates_on_enough_validation_tokens():
    fast, base = RunConfig.load(FAST), RunConfig.load(BASELINE)
    # Same data split and tokenizer as the baseline recipe, so the validation losses compare.
    assert fast.data == base.data and fast.tokenizer == base.tokenizer
    eval_tokens = fast.train.eval_batches * fast.train.batch_size * fast.model.context_length
    base_tokens = base.train.eval_batches * base.train.batch_size * base.model.context_length
    assert eval_tokens >= 2.5 * base_tokens  # a steadier estimate than the baseline's 15k tokens
    assert fast.train.precision == "auto"
