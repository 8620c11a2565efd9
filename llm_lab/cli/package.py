"""``llm-lab package inspect PATH`` and ``llm-lab package create RUN_DIR OUT``."""

from __future__ import annotations

import argparse
import json
import math


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("package", help="inspect a model package, or create one from a run directory")
    actions = parser.add_subparsers(dest="package_command", metavar="ACTION", required=True)

    inspect = actions.add_parser(
        "inspect", help="check every file of a package and print its config, size, tokenizer, training"
    )
    inspect.add_argument("path", metavar="PATH", help="the package directory")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(func=_inspect)

    create = actions.add_parser("create", help="turn a Trainer run directory into a package")
    create.add_argument("run_dir", metavar="RUN_DIR", help="run directory (run.json, tokenizer/, checkpoints/)")
    create.add_argument("out", metavar="OUT", help="package directory to write")
    create.add_argument(
        "--force",
        action="store_true",
        help="replace an existing llm-lab package at OUT (never a directory holding files its manifest does not list)",
    )
    create.set_defaults(func=_create)


def _fmt_int(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _inspect(args: argparse.Namespace) -> int:
    from llm_lab.core.package.io import describe_package

    info = describe_package(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    cfg = info["config"]
    tok = info["tokenizer"]
    training = info["training"] or {}
    print(f"package   {info['path']}")
    if info["layout"] == "spec":
        print("format    spec layout without a manifest (config.json, tokenizer/, checkpoints/best_val.pt)")
    else:
        print(f"format    v{info['format_version']}, written by llm-lab {info['library_version']} at {info['created']}")
    print(
        f"model     {_fmt_int(info['num_parameters'])} parameters "
        f"({_fmt_int(info['num_non_embedding_parameters'])} non-embedding)"
    )
    print("config    " + ", ".join(f"{k}={v}" for k, v in cfg.items()))
    special = ", ".join(f"{k}={v}" for k, v in tok["special_tokens"].items()) or "none"
    print(f"tokenizer {tok['type']}, {tok['vocab_size']} tokens, special tokens: {special}")
    if info["layout"] == "spec":
        print(f"weights   {', '.join(info['checkpoints'])}")
    else:
        print(f"weights   model.safetensors (= {info['weights_from']} checkpoint); {', '.join(info['checkpoints'])}")
    loss = training.get("best_val_loss")
    loss_text = "n/a" if loss is None else f"{loss:.4f} (perplexity {math.exp(loss):.2f})"
    print(
        f"training  steps={_fmt_int(training.get('steps'))}, tokens={_fmt_int(training.get('tokens'))}, "
        f"best val loss={loss_text}"
    )
    if info["source"]:
        print(f"source    {info['source']}")
    return 0


def _create(args: argparse.Namespace) -> int:
    from llm_lab.core.package.io import package_run

    out = package_run(args.run_dir, args.out, overwrite=args.force)
    print(f"wrote package {out}")
    return 0
