"""``llm-lab eval PACKAGE --data FILE``: loss, perplexity and bits per byte on a held-out text;
``llm-lab eval PACKAGE --tasks hellaswag,...``: EleutherAI lm-evaluation-harness tasks (see ``core/harness.py``);
``llm-lab eval PACKAGE --task-file FILE``: accuracy on a generated task by its checker (see ``core/chat``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llm_lab.cli.sample import add_dtype_argument, positive_int
from llm_lab.utils.paths import check_input_file
from llm_lab.utils.words import plural


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="loss, perplexity and bits per byte on a text file, or lm-evaluation-harness tasks"
    )
    parser.add_argument("package", metavar="PACKAGE", help="a package directory (or a run directory)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", metavar="FILE", help="UTF-8 text file to evaluate on")
    what.add_argument(
        "--tasks",
        metavar="T1,T2",
        help="lm-evaluation-harness tasks, comma-separated (hellaswag,arc_easy,wikitext; needs the [eval] extra)",
    )
    what.add_argument(
        "--task-file",
        metavar="FILE",
        type=Path,
        help="a generated task (llm-lab data synth): accuracy of greedy replies by the task's checker",
    )
    harness = parser.add_argument_group("harness tasks (with --tasks)")
    harness.add_argument("--include-path", metavar="DIR", default=None, help="a folder of task YAML files of your own")
    harness.add_argument("--limit", type=positive_int, default=None,
                         help="at most N documents per task (with --task-file: the first N examples)")
    harness.add_argument("--num-fewshot", type=int, default=None, metavar="K", help="examples per prompt")
    harness.add_argument("--output-path", metavar="FILE", default=None, help="write the harness's results JSON here "
                         "(replaces only a JSON file llm-lab wrote)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default=None, help="weights to use")
    parser.add_argument("--context-length", type=positive_int, default=None, help="window (default: the model's)")
    parser.add_argument(
        "--batch-size", type=positive_int, default=None, help="sequences per forward pass (8 with --data, 16 --tasks)"
    )
    parser.add_argument("--max-tokens", type=positive_int, default=None, help="evaluate only the first N tokens")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_dtype_argument(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.tasks is not None:
        return _run_tasks(args)
    if args.task_file is not None:
        from llm_lab.cli.chat import run_task_file

        return run_task_file(args)
    for option in ("include_path", "limit", "num_fewshot", "output_path"):  # harness options: silently ignored before
        if getattr(args, option) is not None:
            hint = "; print the result as JSON with --json > FILE" if option == "output_path" else ""
            raise ValueError(f"--{option.replace('_', '-')} does not apply to --data; leave it out{hint}")
    data = check_input_file(args.data, "--data", "a UTF-8 text file")  # a directory, a FIFO, a device: said so
    from llm_lab.core.data.prepare import read_text_file
    from llm_lab.core.decode import model_in_dtype
    from llm_lab.core.evaluation import evaluate_text

    text = read_text_file(data)  # exactly as `data prepare` reads it: CRLF stays CRLF
    from llm_lab.core.package.io import load_package_or_run

    _, tokenizer, model = load_package_or_run(args.package, checkpoint=args.checkpoint, device=args.device)
    result = evaluate_text(
        model_in_dtype(model, args.dtype),
        tokenizer,
        text,
        context_length=args.context_length,
        batch_size=args.batch_size or 8,
        max_tokens=args.max_tokens,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"loss           {result.loss:.4f} nats/token")
        print(f"perplexity     {result.perplexity:.3f}")
        print(f"bits per byte  {result.bits_per_byte:.4f}")
        print(f"evaluated      {plural(result.tokens, 'token', thousands=True)}, "
              f"{plural(result.bytes, 'byte', thousands=True)} of {data}")
    return 0


def _run_tasks(args: argparse.Namespace) -> int:
    tasks = [name.strip() for name in args.tasks.split(",") if name.strip()]
    if not tasks:
        raise ValueError("--tasks: give at least one task name (e.g. --tasks hellaswag,wikitext)")
    for option in ("context_length", "max_tokens", "json"):
        if getattr(args, option):
            raise ValueError(f"--{option.replace('_', '-')} applies to --data only; leave it out with --tasks")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise ValueError(f"--num-fewshot must be 0 or more, got {args.num_fewshot}")
    try:
        from lm_eval.utils import make_table

        from llm_lab.core.harness import LabLM, evaluate_tasks
    except ModuleNotFoundError as error:
        raise ValueError(
            f"--tasks needs EleutherAI's lm-evaluation-harness ({(error.name or 'lm_eval').split('.')[0]} is missing): "
            'pip install "foundry-llm[eval]" (from a checkout: pip install -e ".[eval]")'
        ) from None
    from llm_lab.utils.outputs import check_output_file, write_output_json

    if args.output_path is not None:  # before the model is loaded: a file of yours is refused first
        check_output_file(args.output_path, "--output-path")
    lm = LabLM.from_package(
        args.package, checkpoint=args.checkpoint, device=args.device, batch_size=args.batch_size or 16, dtype=args.dtype
    )
    results = evaluate_tasks(lm, tasks, include_path=args.include_path, limit=args.limit, num_fewshot=args.num_fewshot)
    print(make_table(results))
    if "groups" in results:
        print(make_table(results, "groups"))
    if args.output_path is not None:
        # The harness's results hold a few objects JSON has no type for (dtypes, functions): written as text.
        write_output_json(args.output_path, "eval", json.loads(json.dumps(results, default=str)), "--output-path")
        print(f"wrote {args.output_path}")
    return 0
