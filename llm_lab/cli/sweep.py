"""``llm-lab sweep``: train every setting x seed, then report; ``llm-lab sweep report DIR`` rebuilds the report."""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from llm_lab.cli.sample import positive_int
from llm_lab.utils.errors import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    sweep = subparsers.add_parser(
        "sweep",
        help="ablation sweep: every setting x seed as a run, then a report with statistics",
        description="Train every combination of --grid values (and/or the named settings of --sweep-file) for each "
        "seed under OUT/runs/, then write OUT/report.md, results.csv, runs.csv and PNGs. Rerun the same command to "
        "resume a killed sweep. `llm-lab sweep report OUT` rebuilds the report from the run folders.",
    )
    sweep.add_argument("--config", type=Path, default=None, help="base run config JSON (as for llm-lab train)")
    sweep.add_argument("--data", type=Path, default=None, help="text file or prepared directory, for every run")
    sweep.add_argument("--out", type=Path, default=None, help="the sweep folder")
    sweep.add_argument("--grid", action="append", default=[], metavar="SECTION.KEY=V1,V2",
                       help="values to try for one setting, e.g. --grid model.norm=layernorm,rmsnorm (repeatable; "
                       "every combination runs)")  # fmt: skip
    sweep.add_argument("--sweep-file", type=Path, default=None,
                       help='JSON: {"settings": {"name": {"section.key": value}}, "grid": {...}, "set": {...}, '
                       '"seeds": N, "baseline": NAME, "time_budget_s": S}')  # fmt: skip
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="a value shared by every run, e.g. --set train.max_steps=300 (repeatable)")
    sweep.add_argument("--seeds", type=int, default=None,
                       help="runs per setting, seeded train.seed, train.seed+1, ... (default 1, or the sweep file's; "
                       "at most 1000)")
    sweep.add_argument("--baseline", default=None, metavar="SETTING",
                       help="the setting the others are compared with (default: the first)")
    sweep.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                       help="equal wall time per run: the schedule is scaled to the steps that fill it (default: "
                       "equal steps, the config's train.max_steps; at most 604800, a week)")  # fmt: skip
    sweep.add_argument("--jobs", type=int, default=1,
                       help="runs at a time, each with its share of the cores (lowered to fit cores and memory)")
    sweep.add_argument("--extend", action="store_true", help="add these settings and seeds to the sweep in --out")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.add_argument("--eval-tasks", default=None, metavar="T1,T2",
                       help="also score each run on lm-evaluation-harness tasks (columns in results.csv and report)")
    sweep.add_argument("--eval-include-path", default=None, metavar="DIR", help="a folder of task YAML files")
    sweep.add_argument("--eval-limit", type=positive_int, default=None, metavar="N",
                       help="at most N documents per task")
    sweep.set_defaults(func=_run_sweep)

    commands = sweep.add_subparsers(dest="sweep_command", metavar="[report DIR]", title="rebuilding the report")
    report = commands.add_parser("report", help="rebuild DIR/report.md, results.csv and the PNGs from the run folders")
    report.add_argument("dir", type=Path, help="the sweep folder")
    report.add_argument("--baseline", dest="report_baseline", default=None, metavar="SETTING",
                        help="compare against this setting instead of the sweep's baseline")
    report.set_defaults(func=_run_report)


def _run_sweep(args: argparse.Namespace) -> int:
    from llm_lab.core.train.run_config import load_run_config
    from llm_lab.experiments.sweep import run_sweep
    from llm_lab.experiments.sweep_plan import (
        SweepPlan,
        grid_settings,
        load_sweep_file,
        parse_grid_option,
        seed_list,
    )
    from llm_lab.experiments.sweep_report import write_sweep_report

    for option in ("config", "data", "out"):
        if getattr(args, option) is None:
            raise CLIError(f"a sweep needs --{option} (see llm-lab sweep --help)")
    spec = load_sweep_file(args.sweep_file) if args.sweep_file is not None else {}
    shared = [f"{k}={json.dumps(v)}" for k, v in spec.get("set", {}).items()] + list(args.overrides)
    grid = dict(spec.get("grid", {}))
    for option in args.grid:
        key, values = parse_grid_option(option)
        if key in grid:
            raise CLIError(f"--grid {key} is given twice; list all its values in one --grid")
        grid[key] = values
    seeds = args.seeds if args.seeds is not None else spec.get("seeds", 1)
    if not grid and not spec.get("settings"):
        raise CLIError("nothing to compare: give --grid SECTION.KEY=V1,V2 or a --sweep-file with settings")
    base = load_run_config(args.config, shared)
    plan = SweepPlan(
        base=base,
        data=args.data,
        settings=grid_settings(grid, spec.get("settings")),
        seeds=seed_list(base.train.seed, seeds),
        time_budget_s=args.time_budget if args.time_budget is not None else spec.get("time_budget_s"),
        baseline=args.baseline if args.baseline is not None else spec.get("baseline"),
    )
    # The shared --threads counts all jobs together; "auto" (or nothing) was already applied to this process, and
    # then the jobs share the cores this process may use.
    threads = args.threads if isinstance(args.threads, int) else None
    evaluate = None
    if args.eval_tasks is not None:
        from llm_lab.experiments.sweep_eval import check_eval_tasks, harness_results

        tasks = tuple(name.strip() for name in args.eval_tasks.split(",") if name.strip())
        check_eval_tasks(tasks, args.eval_include_path)
        evaluate = functools.partial(harness_results, tasks, args.eval_include_path, args.eval_limit)
    result = run_sweep(plan, args.out, jobs=args.jobs, threads=threads, extend=args.extend,
                       progress=not args.quiet, evaluate=evaluate)  # fmt: skip
    paths = write_sweep_report(result.out_dir)
    print(paths["md"].read_text(encoding="utf-8"), end="")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from llm_lab.experiments.sweep_report import write_sweep_report

    paths = write_sweep_report(args.dir, baseline=args.report_baseline)
    print(paths["md"].read_text(encoding="utf-8"), end="")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
