"""``llm-lab experiment posenc|collect|chat``: the positional-encoding study (a sweep preset), the run report and the
chat recipe (parsing only)."""

from __future__ import annotations

import argparse
from pathlib import Path

import llm_lab

# The checkout, for the default corpus (see default_corpus_path: the user's data/ first, then a shared copy).
REPO_ROOT = Path(llm_lab.__file__).resolve().parents[1]
# Where the scripts put runs: the p1 scripts under runs/, the studies and p2 under experiments/.
DEFAULT_RUN_ROOTS = (Path("runs"), Path("experiments"))


def register(subparsers: argparse._SubParsersAction) -> None:
    experiment = subparsers.add_parser(
        "experiment", help="experiments: positional-encoding study, run report, chat recipe"
    )
    commands = experiment.add_subparsers(dest="experiment_command", metavar="EXPERIMENT", required=True)

    posenc = commands.add_parser(
        "posenc", help="train each positional encoding on one corpus and budget; compare; test at 2x context"
    )
    posenc.add_argument("--data", type=Path, default=None,
                        help="text file or prepared directory (default: data/tiny_shakespeare.txt, yours first)")
    posenc.add_argument("--out", type=Path, default=Path("experiments") / "posenc", help="output directory")
    posenc.add_argument("--config", type=Path, default=None,
                        help="run config JSON shared by every encoding (default: a 0.8M-parameter char model)")
    posenc.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set train.max_steps=300 (repeatable)")
    posenc.add_argument("--encodings", nargs="+", default=None,
                        help="subset and order (default: every registered encoding, in registry order; an unknown "
                        "name is refused with the list)")
    posenc.add_argument("--factor", type=int, default=2, help="evaluate at this multiple of the context (default 2)")
    posenc.add_argument("--seeds", type=int, default=1,
                        help="train each encoding with this many seeds (train.seed, +1, ...); the report gives mean "
                        "+- std, 95%% intervals and Welch's t-test against the first encoding (default 1)")
    posenc.add_argument("--quick", action="store_true", help="tiny model and budget: about a minute in all")
    posenc.set_defaults(func=_run_posenc)

    collect = commands.add_parser(
        "collect", help="every run directory under ROOT -> report.md, report.csv and curves.png"
    )
    collect.add_argument("roots", type=Path, nargs="*", metavar="ROOT",
                         help="folders holding run directories (default: runs and experiments, those that exist)")
    collect.add_argument("--out", type=Path, default=None,
                         help="output directory (default: ROOT/report for one ROOT, ROOT/collected for a sweep, else "
                         "experiments/report): new, "
                         "empty, or one collect wrote (replaced whole); never a folder of yours")
    collect.add_argument("--title", default="Runs", help="report title")
    collect.set_defaults(func=_run_collect)

    chat = commands.add_parser(
        "chat", help="the chat recipe: base model, SFT and RL (3 seeds) scored side by side on held-out tasks"
    )
    chat.add_argument("--data", type=Path, default=None,
                      help="the base model's text (default: data/tiny_shakespeare.txt, yours first)")
    chat.add_argument("--recipe", type=Path, default=REPO_ROOT / "configs" / "chat_arithmetic",
                      help="folder with recipe.json, base.json, sft.json, rl.json (default: configs/chat_arithmetic)")
    chat.add_argument("--out", type=Path, default=Path("experiments") / "chat", help="output directory (new)")
    chat.add_argument("--quick", action="store_true", help="tiny budgets: checks the plumbing in seconds")
    chat.set_defaults(func=_run_chat)


def _run_chat(args: argparse.Namespace) -> int:
    from llm_lab.experiments.chat_recipe import run_chat_recipe

    data = args.data
    if data is None:
        from llm_lab.core.data.download import default_corpus_path

        data = default_corpus_path(REPO_ROOT)
    result = run_chat_recipe(args.recipe, data, args.out, quick=args.quick)
    print(result.files["markdown"].read_text(encoding="utf-8"))
    print(f"report: {result.files['markdown']} and {result.files['csv']}")
    return 0


def _run_posenc(args: argparse.Namespace) -> int:
    from llm_lab.core.model.config import POS_ENCODINGS
    from llm_lab.experiments.posenc import PosEncStudy, load_study_config, run_study, study_table
    from llm_lab.experiments.sweep_plan import seed_list

    data = args.data
    if data is None:
        from llm_lab.core.data.download import default_corpus_path

        data = default_corpus_path(REPO_ROOT)
        if not data.is_file():
            raise FileNotFoundError(
                f"the default corpus {data} is not here; pass --data FILE (e.g. after "
                "`llm-lab data download tiny_shakespeare`)"
            )
    config = load_study_config(args.config, args.overrides, quick=args.quick)
    study = PosEncStudy(
        base=config,
        data=data,
        out_dir=args.out,
        encodings=tuple(args.encodings) if args.encodings else POS_ENCODINGS,
        extrapolation_factor=args.factor,
        seeds=seed_list(config.train.seed, args.seeds),
    )
    paths = run_study(study)
    print(study_table(study), end="")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _default_collect_out(roots: list[Path]) -> Path:
    """ROOT/report for one ROOT (ROOT/collected for a sweep: its report/ is the sweep's), else experiments/report."""
    if len(roots) != 1:
        return Path("experiments/report")
    from llm_lab.experiments.sweep import MANIFEST

    return roots[0] / ("collected" if (roots[0] / MANIFEST).is_file() else "report")


def _run_collect(args: argparse.Namespace) -> int:
    from llm_lab.experiments.report import find_runs, write_report
    from llm_lab.utils.outputs import check_output_directory, output_directory

    roots = args.roots or [p for p in DEFAULT_RUN_ROOTS if p.is_dir()]
    if not roots:
        raise FileNotFoundError(
            f"no {' or '.join(map(str, DEFAULT_RUN_ROOTS))} folder here; pass the folder that holds your runs"
        )
    out = args.out if args.out is not None else _default_collect_out(roots)
    for root in roots:
        find_runs(root)  # a missing ROOT is named before the default ROOT/report could create it
    check_output_directory(out)  # a folder of yours is refused before the runs are read (llm_lab.utils.outputs)
    with output_directory(out, "experiment collect") as staged:
        written = write_report(roots, staged.path, title=args.title)
        print(written["md"].read_text(encoding="utf-8"), end="")
    print("wrote " + ", ".join(str(staged.final(p)) for p in written.values()))
    return 0
