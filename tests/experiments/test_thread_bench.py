"""The thread benchmark (llm_lab/experiments/thread_bench.py): its arithmetic with made-up clocks, its busy loop."""

from __future__ import annotations

import pytest

from llm_lab.experiments.thread_bench import (
    ThreadBenchConfig,
    Workload,
    build_workloads,
    busy_loop,
    measure_condition,
)


def test_measure_condition_interleaves_settings_and_keeps_the_median_per_unit():
    """Each run of the workload advances the fake clock by a cost that depends on the current threads:
    1 thread 0.4 s, 2 threads 0.2 s, except the second timed 2-thread run (0.6 s). With 2 units per run, that is
    0.2 s per unit at 1 thread, and the median of (0.1, 0.3, 0.1) = 0.1 at 2."""
    now = [0.0]
    current = [1]
    order: list[int] = []
    runs_at_two = [0]

    def run() -> None:
        order.append(current[0])
        cost = 0.4 if current[0] == 1 else 0.2
        if current[0] == 2:
            runs_at_two[0] += 1
            if runs_at_two[0] == 3:  # the warm-up run, then the second timed one
                cost = 0.6
        now[0] += cost

    workload = Workload("w", "step", 2, run)
    result = measure_condition(
        [workload], [1, 2, 2], 3, set_threads=lambda n: current.__setitem__(0, n), clock=lambda: now[0]
    )
    assert result == {"w": {1: pytest.approx(0.2), 2: pytest.approx(0.1)}}
    assert order == [1, 2, 1, 2, 2, 1, 1, 2]  # warm-ups, then rounds rotated: (1, 2), (2, 1), (1, 2)


def test_config_validation():
    ThreadBenchConfig.quick().validate()
    with pytest.raises(ValueError, match="repeats must be a positive integer, got 0"):
        ThreadBenchConfig(repeats=0).validate()
    with pytest.raises(ValueError, match=r"conditions must be idle and/or busy, got \['loaded'\]"):
        ThreadBenchConfig(conditions=("loaded",)).validate()


def test_workloads_are_the_three_of_the_issue():
    names = [w.name for w in build_workloads(ThreadBenchConfig.quick())]
    assert [n.split(" (")[0] for n in names] == ["train small", "train 10M", "decode b1"]


def test_busy_loop_runs_only_inside_the_block():
    with busy_loop() as process:
        assert process.poll() is None  # spinning
    assert process.poll() is not None  # stopped, and reaped


@pytest.mark.slow
def test_one_tiny_run_gives_a_row_per_condition_and_workload(tmp_path):
    from llm_lab.experiments.thread_bench import run_thread_benchmark, write_thread_results

    config = ThreadBenchConfig(small_steps=1, big_steps=1, big_batch=1, decode_tokens=2, repeats=1,
                               fixed_threads=(1, 2))  # fmt: skip
    rows = run_thread_benchmark(config)
    assert [(r["condition"], r["workload"].split(" (")[0]) for r in rows] == [
        (c, w) for c in ("idle", "busy") for w in ("train small", "train 10M", "decode b1")
    ]
    for row in rows:
        assert min(row["1 thr / best"], row["2 thr / best"]) == 1.0  # the best fixed count is the reference
        assert row["auto threads"] in (1, 2)
    paths = write_thread_results(rows, tmp_path, note="tiny")
    assert "| auto / best |" in paths["md"].read_text() and paths["csv"].is_file()
