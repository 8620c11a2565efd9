"""Ablation sweeps (llm_lab/experiments/sweep.py, sweep_report.py): the plan, its checks, budgets, jobs, the report.

Real sweeps (several training runs) are slow-marked; the default suite checks the plan, the folder rules and the
report numbers on hand-written run folders.
"""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest

from llm_lab.core.model.gpt import MiniGPTConfig
from llm_lab.core.train.config import TrainerConfig
from llm_lab.core.train.metrics import METRICS_COLUMNS, read_metrics
from llm_lab.core.train.run import DataConfig, RunConfig, TokenizerSpec
from llm_lab.experiments import sweep as sweep_module
from llm_lab.experiments.stats import t_quantile, welch_t_test
from llm_lab.experiments.sweep import (
    MAX_GRID_VALUES,
    MAX_SEEDS,
    Setting,
    SweepPlan,
    budget_steps,
    grid_settings,
    load_sweep_file,
    parse_grid_option,
    run_sweep,
    scale_schedule,
    seed_list,
    size_jobs,
)
from llm_lab.experiments.sweep_report import RESULT_COLUMNS, write_sweep_report
from llm_lab.experiments.tables import read_csv

# Columns of results.csv that depend on the machine's speed at the time, not on the training itself.
TIMING = ("tokens_per_second", "wall_time_s")


def tiny_config(max_steps: int = 6, **train) -> RunConfig:
    return RunConfig(
        model=MiniGPTConfig(context_length=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0),
        train=TrainerConfig(**({
            "batch_size": 4, "max_steps": max_steps, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 1,
            "eval_interval": 3, "eval_batches": 2, "log_interval": 2, "device": "cpu", "precision": "fp32",
            "peak_flops": 1e12, "seed": 7,
        } | train)),  # fmt: skip
        tokenizer=TokenizerSpec(type="char"),
        data=DataConfig(val_fraction=0.2),
    )


@pytest.fixture
def corpus(tmp_path, small_text):
    path = tmp_path / "corpus.txt"
    path.write_text(small_text)
    return path


def snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def deterministic(rows):
    return [{k: v for k, v in row.items() if not k.startswith(TIMING)} for row in rows]


# --------------------------------------------------------------------------------------------------- the plan
def test_grid_settings_cross_every_value_and_named_settings():
    grid = {"model.norm": ["layernorm", "rmsnorm"], "model.n_layer": [1, 2]}
    settings = grid_settings(grid)
    assert [s.name for s in settings] == [
        "norm=layernorm n_layer=1", "norm=layernorm n_layer=2", "norm=rmsnorm n_layer=1", "norm=rmsnorm n_layer=2",
    ]  # fmt: skip
    assert settings[1].overrides == ('model.norm="layernorm"', "model.n_layer=2")
    assert settings[1].slug == "norm-layernorm_n_layer-2"
    named = grid_settings({"model.n_layer": [1, 2]}, {"base": {}, "fast": {"train.lr": 0.01}})
    assert [(s.name, s.overrides) for s in named] == [
        ("base n_layer=1", ("model.n_layer=1",)), ("base n_layer=2", ("model.n_layer=2",)),
        ("fast n_layer=1", ("train.lr=0.01", "model.n_layer=1")),
        ("fast n_layer=2", ("train.lr=0.01", "model.n_layer=2")),
    ]  # fmt: skip
    assert [s.name for s in grid_settings(None, {"a": {}, "b": {"model.mlp": "swiglu"}})] == ["a", "b"]


def test_parse_grid_option_reads_json_values():
    assert parse_grid_option("model.n_layer=2,3") == ("model.n_layer", [2, 3])
    assert parse_grid_option("model.norm=layernorm, rmsnorm") == ("model.norm", ["layernorm", "rmsnorm"])
    assert parse_grid_option("train.compile=true,false") == ("train.compile", [True, False])
    with pytest.raises(ValueError, match="expected section.key=value1,value2"):
        parse_grid_option("model.norm")
    with pytest.raises(ValueError, match="no values"):
        parse_grid_option("model.norm=")
    with pytest.raises(ValueError, match="use --seeds"):
        parse_grid_option("train.seed=1,2")


def test_scale_schedule_keeps_the_shape():
    """1000 steps -> 250: factor 1/4. warmup 100 -> 25, decay end 800 -> 200, eval 250 -> 62 (62.5 rounds to even),
    log 10 -> 2 (2.5 -> 2), checkpoint 100 -> 25; the number of evaluations stays ceil(250/62) = 5 ~ 1000/250 = 4+1."""
    train = TrainerConfig(max_steps=1000, warmup_steps=100, lr_decay_steps=800, eval_interval=250, log_interval=10,
                          checkpoint_interval=100)  # fmt: skip
    scaled = scale_schedule(train, 250)
    assert (scaled.max_steps, scaled.warmup_steps, scaled.lr_decay_steps) == (250, 25, 200)
    assert (scaled.eval_interval, scaled.log_interval, scaled.checkpoint_interval) == (62, 2, 25)
    assert scaled.lr == train.lr and scaled.sample_interval == 0
    tiny = scale_schedule(train, 3)  # intervals never reach 0 nor exceed the run
    assert (tiny.warmup_steps, tiny.eval_interval, tiny.log_interval) == (0, 1, 1)


def test_budget_steps_reserves_the_evaluations():
    """max_steps 6, eval every 3: 2 evaluations of 0.5 s; 10 s - 1 s leaves 9 s = 90 steps of 0.1 s."""
    train = TrainerConfig(max_steps=6, eval_interval=3, warmup_steps=1)
    assert budget_steps(train, 10.0, step_s=0.1, eval_s=0.5) == 90
    with pytest.raises(ValueError, match="--time-budget 1s is too short: 2 evaluations take 1.0s"):
        budget_steps(train, 1.0, step_s=0.1, eval_s=0.5)


def test_size_jobs_never_oversubscribes():
    assert size_jobs(1, 8) == (1, None, [])  # one job keeps torch's own thread choice
    assert size_jobs(1, 8, explicit_threads=True) == (1, 8, [])
    assert size_jobs(4, 8) == (4, 2, [])
    jobs, threads, notes = size_jobs(6, 2)
    assert (jobs, threads) == (2, 1) and "lowered to 2: one job per core" in notes[0]
    gib = 2**30
    jobs, threads, notes = size_jobs(4, 8, run_bytes=3 * gib, available_bytes=10 * gib)
    assert (jobs, threads) == (2, 4) and "lowered to 2: each run needs about 3,072 MiB" in notes[0]  # 8 GiB usable
    assert size_jobs(4, 8, run_bytes=gib, available_bytes=100 * gib)[:2] == (4, 2)


def test_sweep_file(tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"settings": {"base": {}, "big": {"model.n_layer": 2}}, "seeds": 3}))
    assert load_sweep_file(path) == {"settings": {"base": {}, "big": {"model.n_layer": 2}}, "seeds": 3}
    for text, message in [
        ('{"settings": {}, "settings": {}}', "duplicate"),
        ('{"setings": {}}', "unknown key 'setings'"),
        ('{"grid": [1]}', "'grid' must be an object"),
        ('{"seeds": "3"}', "'seeds' must be a number"),
        ('{"set": {"train.seed": 1}}', "use --seeds"),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_sweep_file(path)


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"model.nope": [1, 2]}, r"setting 'nope=1': .*unknown key 'nope'"),
        ({"model.n_layer": ["two", 3]}, r"setting 'n_layer=two': .*n_layer"),
        # Half the combinations are fine (n_head=2, even the first): the others are still found before any run.
        ({"model.norm": ["layernorm", "rmsnorm"], "model.n_head": [2, 3]},
         r"setting 'norm=layernorm n_head=3'.*n_head"),
    ],
)  # fmt: skip
def test_a_bad_grid_stops_before_anything_is_written(tmp_path, corpus, grid, message):
    plan = SweepPlan(tiny_config(), corpus, grid_settings(grid), seeds=[1, 2])
    with pytest.raises(ValueError, match=message):
        run_sweep(plan, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"seeds": []}, ValueError, "needs at least one seed"),
        ({"seeds": [1, 1]}, ValueError, "each seed may appear once"),
        ({"settings": []}, ValueError, "has no settings"),
        ({"baseline": "nope"}, ValueError, "baseline 'nope' is not a setting"),
        ({"time_budget_s": 0}, ValueError, "--time-budget must be a positive number"),
        ({"time_budget_s": 1e12}, ValueError, r"--time-budget 1e\+12s is more than a week per run; the most is 604800"),
        ({"seeds": list(range(1001))}, ValueError, "at most 1000 seeds per setting, got 1,001"),
        ({"settings": [Setting(str(i)) for i in range(11)], "seeds": list(range(1000))}, ValueError,
         "11 settings x 1,000 seeds make 11,000 runs; a sweep may have at most 10,000"),
        ({"settings": [Setting("a b"), Setting("a_b")]}, ValueError, "would share the directory name 'a_b'"),
        ({"data": "missing.txt"}, FileNotFoundError, "does not exist"),
    ],
)
def test_bad_plans(tmp_path, corpus, kwargs, error, message):
    arguments = {"base": tiny_config(), "data": corpus, "settings": [Setting("a"), Setting("b")], "seeds": [1]}
    arguments |= kwargs
    if kwargs.get("data"):
        arguments["data"] = tmp_path / kwargs["data"]
    with pytest.raises(error, match=message):
        SweepPlan(**arguments)


def fake_sweep(tmp_path, corpus):
    """A previous sweep's folder (its plan and one run's files), written by hand: nothing must change it."""
    out = tmp_path / "previous"
    plan = SweepPlan(tiny_config(), corpus, grid_settings({"model.norm": ["layernorm", "rmsnorm"]}), seeds=[1])
    (out / "runs" / "norm-layernorm-seed1").mkdir(parents=True)
    (out / "runs" / "norm-layernorm-seed1" / "metrics.csv").write_text("step,val_loss\n3,2.5\n")
    (out / "sweep.json").write_text(json.dumps(plan.to_manifest() | {"steps": {}}))
    return out, plan


@pytest.mark.parametrize(
    ("grid", "extend", "message"),
    [
        ({"model.mlp": ["gelu", "swiglu"]}, False, "holds another sweep .*settings differs.*pass --extend"),
        ({"model.norm": ["layernorm", "rmsnorm"]}, True, None),  # the same plan: allowed, checked below
    ],
)
def test_a_folder_holding_another_sweep_is_refused_and_untouched(tmp_path, corpus, grid, extend, message):
    out, _ = fake_sweep(tmp_path, corpus)
    before = snapshot(out)
    if message is None:
        # The same sweep with another base config (lr) cannot be "extended" either: its runs would change.
        plan = SweepPlan(tiny_config(lr=1e-2), corpus, grid_settings(grid), seeds=[1, 2])
        message = "cannot extend the sweep .*its base differs"
    else:
        plan = SweepPlan(tiny_config(), corpus, grid_settings(grid), seeds=[1])
    with pytest.raises(ValueError, match=message):
        run_sweep(plan, out, extend=extend, progress=False)
    assert snapshot(out) == before


def test_other_folders_are_refused(tmp_path, corpus):
    plan = SweepPlan(tiny_config(), corpus, [Setting("a")], seeds=[1])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and holds no sweep"):
        run_sweep(plan, busy, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        run_sweep(plan, tmp_path / "file", progress=False)
    (busy / "sweep.json").write_text('{"kind": "something else"}')
    with pytest.raises(ValueError, match="is not an llm-lab sweep file"):
        run_sweep(plan, busy, progress=False)
    (busy / "sweep.json").write_text('{"kind": "llm-lab sweep", "format_version": 1, "settings": 3}')
    with pytest.raises(ValueError, match="sweep.json is damaged"):
        run_sweep(plan, busy, progress=False)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt", "sweep.json"]
    with pytest.raises(ValueError, match="--jobs must be at least 1"):
        run_sweep(plan, tmp_path / "new", jobs=0, progress=False)


# ----------------------------------------------------------------------------------------------- the report
def write_run(out, name, val_losses, tokens_per_second, elapsed):
    """A run folder holding only a metrics.csv, as the Trainer writes it (eval rows every 3 steps)."""
    run = out / "runs" / name
    run.mkdir(parents=True)
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRICS_COLUMNS)
        writer.writeheader()
        for i, (val, tps, t) in enumerate(zip(val_losses, tokens_per_second, elapsed, strict=True)):
            writer.writerow({"step": 3 * (i + 1), "tokens": 192 * (i + 1), "train_loss": val + 0.1, "val_loss": val,
                             "tokens_per_second": tps, "elapsed_s": t})  # fmt: skip
    (out / "finished").mkdir(exist_ok=True)
    (out / "finished" / f"{name}.json").write_text(json.dumps({"run": name, "extra": {}}))


def test_report_numbers_worked_by_hand(tmp_path, corpus, png_ok):
    """Setting a (baseline), seeds 1-3: final val losses 2.0, 2.2, 2.4 -> mean 2.2, std 0.2, interval
    2.2 +- 4.3027 * 0.2 / sqrt(3) = 2.2 +- 0.49683. Best val: min of each run. tokens/s: median of the rows after
    the first (1000 is warm-up): 90, 100, 110 -> the medians. Wall time: the last elapsed_s.
    Setting b: 3.0, 3.1, 3.2 -> mean 3.1, std 0.1; Welch t = (3.1 - 2.2) / sqrt(0.01/3 + 0.04/3) = 6.9714,
    df = (0.05/3)^2 / ((0.01/3)^2/2 + (0.04/3)^2/2) = 2.9412; |t| lies between the table's t(0.995, 3) = 5.841 and
    t(0.9995, 3) = 12.92, so 0.001 < p < 0.01 -> '**'. b ranks third (c's one run is better).
    Setting c has one run finished, one not and one diverged: n/a, and the other two are listed."""
    out = tmp_path / "sweep"
    settings = [Setting("a"), Setting("b", ("model.n_layer=2",)), Setting("c", ("model.mlp=\"swiglu\"",))]
    plan = SweepPlan(tiny_config(), corpus, settings, seeds=[1, 2, 3])
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps(plan.to_manifest() | {"steps": {}}))
    for seed, (first, final) in enumerate([(2.5, 2.0), (2.6, 2.2), (2.7, 2.4)], start=1):
        write_run(out, f"a-seed{seed}", [first, 1.9 + 0.1 * seed, final], [1000, 90 + seed, 100 + seed], [1, 2, seed])
    for seed, final in enumerate([3.0, 3.1, 3.2], start=1):
        write_run(out, f"b-seed{seed}", [3.5, final], [1000, 50], [1, 10])
    write_run(out, "c-seed1", [2.1], [70], [4])
    (out / "runs" / "c-seed2").mkdir()  # started, not finished
    write_run(out, "c-seed3", [2.0], [70], [4])  # diverged after that row: left out of the statistics
    (out / "finished" / "c-seed3.json").write_text('{"run": "c-seed3", "extra": {}, "diverged": "loss became nan"}')

    paths = write_sweep_report(out)
    rows = {r["setting"]: r for r in read_csv(paths["csv"])}
    assert list(read_csv(paths["csv"])[0]) == list(RESULT_COLUMNS)
    a, b, c = rows["a"], rows["b"], rows["c"]
    assert [r["rank"] for r in (c, a, b)] == ["1", "2", "3"]
    assert float(a["val_loss_mean"]) == pytest.approx(2.2) and float(a["val_loss_std"]) == pytest.approx(0.2)
    half = t_quantile(0.975, 2) * 0.2 / math.sqrt(3)
    assert float(a["val_loss_ci95_low"]) == pytest.approx(2.2 - half)
    assert float(a["val_loss_ci95_high"]) == pytest.approx(2.2 + half)
    assert float(a["best_val_loss_mean"]) == pytest.approx(statistics.fmean([2.0, 2.1, 2.2]))
    assert float(a["tokens_per_second_mean"]) == pytest.approx(statistics.fmean([96, 97, 98]))  # median of 2 rows
    assert float(a["wall_time_s_mean"]) == pytest.approx(2.0)
    assert a["significance"] == "baseline" and a["p_value"] == ""
    assert float(b["val_loss_delta"]) == pytest.approx(0.9)
    assert float(b["p_value"]) == welch_t_test([3.0, 3.1, 3.2], [2.0, 2.2, 2.4]).p_value
    assert 0.001 < float(b["p_value"]) < 0.01 and b["significance"] == "**"
    assert c["seeds"] == "1" and c["val_loss_std"] == "" and c["significance"] == "n/a"
    md = paths["md"].read_text()
    assert "Welch's two-sided t-test" in md and "Not finished yet (left out): c-seed2." in md
    assert "Diverged (loss became NaN or infinite; left out of the statistics): c-seed3 (loss became nan)" in md
    assert "7 finished run(s) of 9" in md
    assert "| 2    | a " in md and "2.2 +- 0.2 [1.703, 2.697]" in md
    assert len(read_csv(paths["runs_csv"])) == 7
    png_ok(paths["curves_png"])
    png_ok(paths["loss_png"], min_size=(200, 100))
    # Another baseline for the same runs: b against c has one seed on one side, so no test.
    rows = {r["setting"]: r for r in read_csv(write_sweep_report(out, baseline="b")["csv"])}
    assert rows["b"]["significance"] == "baseline" and rows["a"]["significance"] == "**"
    with pytest.raises(ValueError, match="baseline 'x' is not a setting"):
        write_sweep_report(out, baseline="x")


@pytest.mark.parametrize("last", [float("-inf"), float("nan"), float("inf")])
def test_a_run_whose_last_validation_loss_is_not_finite_is_reported_diverged(tmp_path, corpus, last):
    """Before: the -inf row was skipped, and the run's earlier loss (2.1) was reported as final and best."""
    out = tmp_path / "sweep"
    plan = SweepPlan(tiny_config(), corpus, [Setting("a")], seeds=[1, 2])
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps(plan.to_manifest() | {"steps": {}}))
    write_run(out, "a-seed1", [2.5, 2.0], [1000, 90], [1, 2])
    write_run(out, "a-seed2", [2.5, 2.1, last], [1000, 90, 90], [1, 2, 3])
    paths = write_sweep_report(out)
    (row,) = read_csv(paths["csv"])
    assert row["seeds"] == "1" and float(row["val_loss_mean"]) == 2.0 and float(row["best_val_loss_mean"]) == 2.0
    md = paths["md"].read_text()
    assert f"a-seed2 (the val_loss {last} at step 9)" in md and "1 finished run(s) of 2" in md
    assert [r["run"] for r in read_csv(paths["runs_csv"])] == ["a-seed1"]


def test_report_of_a_folder_without_a_sweep(tmp_path):
    with pytest.raises(ValueError, match="holds no sweep"):
        write_sweep_report(tmp_path)


# --------------------------------------------------------------------------------------------- real sweeps
@pytest.mark.slow
def test_time_budget_scales_the_schedule_of_every_run(tmp_path, corpus, monkeypatch):
    """With the machine's speed fixed at 0.1 s a step and 0.05 s an evaluation, a 1 s budget gives
    (1 - 2 x 0.05) / 0.1 = 9 steps (the base has 6 steps, evaluations at 3 and 6); the schedule x1.5:
    warmup 1 -> 2 (1.5 rounds to even), evaluation every 3 -> 4 (4.5 -> 4), logging every 2 -> 3."""
    monkeypatch.setattr(sweep_module, "measure_step_seconds", lambda prepared: [(0.1, 0.05)] * len(prepared))
    plan = SweepPlan(tiny_config(), corpus, [Setting("a")], seeds=[1], time_budget_s=1.0)
    result = run_sweep(plan, tmp_path / "out", progress=False)
    assert result.steps == {"a": 9}
    run = json.loads((tmp_path / "out" / "runs" / "a-seed1" / "run.json").read_text())["train"]
    assert (run["max_steps"], run["warmup_steps"], run["eval_interval"], run["log_interval"]) == (9, 2, 4, 3)
    assert [r["step"] for r in read_metrics(tmp_path / "out" / "runs" / "a-seed1" / "metrics.csv")] == [
        "3", "4", "6", "8", "9",
    ]  # fmt: skip
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["steps"] == {"a": 9}


def recomputed(run_dir):
    """A run's numbers straight from its metrics.csv."""
    rows = read_metrics(run_dir / "metrics.csv")
    val = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    speeds = [float(r["tokens_per_second"]) for r in rows][1:]
    return {"val_loss": val[-1], "best_val_loss": min(val), "tokens_per_second": statistics.median(speeds),
            "wall_time_s": float(rows[-1]["elapsed_s"])}  # fmt: skip


@pytest.mark.slow
def test_two_by_two_grid_with_two_seeds(tmp_path, corpus, capsys, png_ok):
    """The CLI on a 2x2 grid x 2 seeds: 8 ordinary runs, and a report whose every number is recomputed here from
    the runs' own metrics.csv; `sweep report` rebuilds the same files; rerunning trains nothing."""
    from llm_lab.cli import main

    config = tmp_path / "base.json"
    config.write_text(json.dumps(tiny_config().to_dict()))
    out = tmp_path / "sweep"
    argv = ["sweep", "--config", str(config), "--data", str(corpus), "--out", str(out), "--grid",
            "model.norm=layernorm,rmsnorm", "--grid", "model.mlp=gelu,swiglu", "--seeds", "2", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert "| rank | setting" in capsys.readouterr().out
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 8 and "norm-rmsnorm_mlp-swiglu-seed8" in runs
    for name in runs:
        assert (out / "runs" / name / "checkpoints" / "last.pt").is_file()
    run_json = json.loads((out / "runs" / "norm-rmsnorm_mlp-swiglu-seed8" / "run.json").read_text())
    assert (run_json["model"]["norm"], run_json["model"]["mlp"], run_json["train"]["seed"]) == ("rmsnorm", "swiglu", 8)

    results = read_csv(out / "results.csv")
    assert sorted(r["setting"] for r in results) == sorted(
        f"norm={n} mlp={m}" for n in ("layernorm", "rmsnorm") for m in ("gelu", "swiglu")
    )
    for row in results:
        slug = row["setting"].replace("=", "-").replace(" ", "_")
        numbers = [recomputed(out / "runs" / f"{slug}-seed{seed}") for seed in (7, 8)]
        for metric in ("val_loss", "best_val_loss", "tokens_per_second", "wall_time_s"):
            values = [n[metric] for n in numbers]
            assert float(row[f"{metric}_mean"]) == pytest.approx(statistics.fmean(values), rel=1e-12)
            assert float(row[f"{metric}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-9)
        assert row["seeds"] == "2" and int(row["steps"]) == 6
    png_ok(out / "val_curves.png")
    before = (out / "results.csv").read_text()

    assert main(["sweep", "report", str(out)]) == 0
    assert (out / "results.csv").read_text() == before
    metrics_before = snapshot(out / "runs")
    assert main(argv) == 0  # everything finished: nothing retrains
    assert snapshot(out / "runs") == metrics_before


@pytest.mark.slow
def test_extend_adds_only_the_new_runs(tmp_path, corpus):
    plan = SweepPlan(tiny_config(max_steps=3), corpus, grid_settings({"model.norm": ["layernorm"]}), seeds=[1])
    run_sweep(plan, tmp_path / "out", progress=False)
    first = snapshot(tmp_path / "out" / "runs")
    bigger = SweepPlan(tiny_config(max_steps=3), corpus, grid_settings({"model.norm": ["layernorm", "rmsnorm"]}),
                       seeds=[1, 2])  # fmt: skip
    with pytest.raises(ValueError, match="holds another sweep"):
        run_sweep(bigger, tmp_path / "out", progress=False)
    result = run_sweep(bigger, tmp_path / "out", extend=True, progress=False)
    assert len(result.runs) == 4
    after = snapshot(tmp_path / "out" / "runs")
    assert {k: v for k, v in after.items() if k in first} == first  # the finished run was kept as it was
    assert len({k.split("/")[0] for k in after}) == 4


@pytest.mark.slow
def test_identical_settings_are_not_significant_and_a_broken_one_is(tmp_path, corpus):
    """Three named settings x 3 seeds: 'again' is the baseline repeated (the same losses bit for bit: p = 1), 'broken'
    trains with a learning rate 10^4 times too small (it stays near the uniform guess: p < 0.01)."""
    settings = grid_settings(None, {"baseline": {}, "again": {}, "broken": {"train.lr": 1e-6, "train.min_lr": 0.0}})
    plan = SweepPlan(tiny_config(max_steps=30, lr=1e-2, eval_interval=15), corpus, settings, seeds=[1, 2, 3])
    run_sweep(plan, tmp_path / "out", progress=False)
    rows = {r["setting"]: r for r in read_csv(write_sweep_report(tmp_path / "out")["csv"])}
    assert float(rows["again"]["val_loss_delta"]) == 0.0 and float(rows["again"]["p_value"]) == 1.0
    assert rows["again"]["significance"] == "n.s."
    assert float(rows["broken"]["val_loss_delta"]) > 0.3 and float(rows["broken"]["p_value"]) < 0.01
    assert rows["broken"]["significance"] in ("**", "***") and rows["broken"]["rank"] == "3"


@pytest.mark.slow
def test_parallel_jobs_give_the_same_results_as_one_at_a_time(tmp_path, corpus):
    """Two jobs of one thread each (worker processes) against one job of one thread: bitwise the same losses."""
    plan = SweepPlan(tiny_config(), corpus, grid_settings({"model.mlp": ["gelu", "swiglu"]}), seeds=[1, 2])
    serial = run_sweep(plan, tmp_path / "serial", threads=1, progress=False)
    parallel = run_sweep(plan, tmp_path / "parallel", jobs=2, threads=2, progress=False)
    assert (serial.jobs, parallel.jobs) == (1, 2)
    one = read_csv(write_sweep_report(tmp_path / "serial")["csv"])
    two = read_csv(write_sweep_report(tmp_path / "parallel")["csv"])
    assert deterministic(one) == deterministic(two)


@pytest.mark.slow
def test_a_diverging_run_is_recorded_and_the_sweep_goes_on(tmp_path, corpus, monkeypatch):
    from llm_lab.core.train.trainer import NonFiniteLossError, Trainer

    train = Trainer.train

    def diverge_on_seed_2(self):
        if self.config.seed == 2:
            raise NonFiniteLossError("the training loss became nan at step 3")
        return train(self)

    monkeypatch.setattr(Trainer, "train", diverge_on_seed_2)
    plan = SweepPlan(tiny_config(), corpus, [Setting("a")], seeds=[1, 2, 3])
    run_sweep(plan, tmp_path / "out", progress=False)
    record = json.loads((tmp_path / "out" / "finished" / "a-seed2.json").read_text())
    assert record["diverged"] == "the training loss became nan at step 3"
    paths = write_sweep_report(tmp_path / "out")
    assert read_csv(paths["csv"])[0]["seeds"] == "2"
    assert "a-seed2 (the training loss became nan at step 3)" in paths["md"].read_text()


def test_seed_lists_and_grids_are_bounded_before_they_are_built():
    """``--seeds 1000000000`` built a billion-seed list (23 GiB) before anything ran: now the count is checked
    first, and so is the size of a grid's product."""
    assert seed_list(7, 3) == [7, 8, 9]
    assert len(seed_list(0, MAX_SEEDS)) == MAX_SEEDS
    for bad in (0, MAX_SEEDS + 1, 1_000_000_000):
        with pytest.raises(ValueError, match=rf"--seeds must be at least 1 and at most {MAX_SEEDS} .*got {bad}"):
            seed_list(0, bad)
    grid = {f"model.k{i}": list(range(10)) for i in range(5)}  # 100,000 combinations, never listed
    with pytest.raises(ValueError, match="the grid makes 100,000 settings; a sweep may have at most 10,000 runs"):
        grid_settings(grid)
    # One axis of 5000 values (under MAX_RUNS) was accepted and ran for hours: an axis has its own cap, named.
    grid_settings({"train.lr": [i / 1e4 for i in range(1, MAX_GRID_VALUES + 1)]})
    with pytest.raises(ValueError, match=r"^grid train\.lr: 5,000 values; one grid axis may have at most 100 \(each"):
        grid_settings({"train.lr": [i / 1e4 for i in range(1, 5001)]})
    # The last seed of a list must be a seed too (train.seed near 2**63 plus --seeds 3 would overflow torch).
    with pytest.raises(ValueError, match=r"^the last seed \(train\.seed 9223372036854775806 \+ --seeds 3 - 1\) must"):
        seed_list(2**63 - 2, 3)
