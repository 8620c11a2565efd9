"""Each speed-run option (Muon, schedules, zero inits, bigram and value embeddings) against the base config, at a
fixed step budget and a fixed time budget, mean and std over 3 seeds; writes ``summary.md``/``summary.csv``.

    python scripts/ablate_speedrun.py --data tiny_shakespeare.txt --time-budget 20 --threads 1
    python scripts/ablate_speedrun.py --data tiny_shakespeare.txt --quick      # checks the outputs in seconds

The library behind it is ``llm_lab.experiments.ablation``; ``--help`` lists the options.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from llm_lab.cli.threads import add_threads_argument, apply_threads_option
from llm_lab.core.train.run import load_run_config
from llm_lab.experiments.ablation import QUICK_OVERRIDES, SUMMARY_COLUMNS, default_arms, run_ablation
from llm_lab.experiments.tables import markdown_table
from llm_lab.utils.errors import USER_ERRORS, report_user_error
from llm_lab.utils.outputs import check_output_directory, output_directory


def build_parser() -> argparse.ArgumentParser:
    """The arguments of ``scripts/ablate_speedrun.py``."""
    parser = argparse.ArgumentParser(
        description="Each speed-run option's effect on validation loss at a fixed step budget and a fixed time "
        "budget, mean and std over seeds (CSV + markdown)."
    )
    parser.add_argument("--config", type=Path, default=Path("configs/shakespeare_char_fast.json"), help="base")
    parser.add_argument("--data", type=Path, required=True, help="the text corpus (tiny_shakespeare.txt)")
    parser.add_argument("--out", type=Path, default=Path("experiments/ablation"),
                        help="output directory: new, empty, or one this script wrote (replaced whole when done); "
                        "never a folder of yours")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm and budget (0, 1, ...)")
    parser.add_argument("--steps", type=int, default=None, help="step budget (default: the config's max_steps)")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds of training per run (time pass)")
    parser.add_argument("--arms", nargs="+", default=None, help="only these arms (names as in the table)")
    add_threads_argument(parser)
    parser.set_defaults(threads=1)  # one thread unless asked: times of arms are then comparable
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps: checks the outputs only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ablation and print the summary table; 2 after a one-line error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        apply_threads_option(args.threads)
        base = load_run_config(args.config, QUICK_OVERRIDES if args.quick else ())
        arms = default_arms(base)
        if args.arms is not None:
            unknown = sorted(set(args.arms) - {a.name for a in arms})
            if unknown:
                raise ValueError(f"unknown arm(s) {unknown}; choose from: {', '.join(a.name for a in arms)}")
            arms = [a for a in arms if a.name == "base" or a.name in args.arms]
        check_output_directory(args.out)  # a folder of yours is refused before any training (llm_lab.utils.outputs)
        with output_directory(args.out, "ablate_speedrun") as staged:  # runs and tables beside --out, then swapped in
            _, summary = run_ablation(
                base, args.data, staged.path, arms=arms, seeds=range(args.seeds), steps=args.steps,
                time_budget_s=args.time_budget,
            )  # fmt: skip
    except USER_ERRORS as e:
        return report_user_error(parser.prog, e)
    print(markdown_table(summary, SUMMARY_COLUMNS, digits=4))
    print(f"tables: {args.out / 'summary.md'}, {args.out / 'summary.csv'}, {args.out / 'runs.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
