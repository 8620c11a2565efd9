"""``llm-lab export-hf PACKAGE OUT`` and ``llm-lab import-hf HF_DIR OUT``: Hugging Face interop."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export-hf", help="write a package as a Hugging Face model directory (GPT-2 or Llama family)"
    )
    export.add_argument("package", metavar="PACKAGE", help="the package directory")
    export.add_argument("out", metavar="OUT", help="directory to write (config.json, model.safetensors, tokenizer)")
    export.add_argument(
        "--force", action="store_true", help="replace an export this command wrote at OUT (nothing else is replaced)"
    )
    export.set_defaults(func=_export)

    imp = subparsers.add_parser("import-hf", help="turn a local Hugging Face GPT-2 or Llama directory into a package")
    imp.add_argument("hf_dir", metavar="HF_DIR", help="config.json + weights + tokenizer files")
    imp.add_argument("out", metavar="OUT", help="the package directory to write")
    imp.add_argument(
        "--force",
        action="store_true",
        help="replace an existing llm-lab package at OUT (never a directory holding files its manifest does not list)",
    )
    imp.set_defaults(func=_import)


def _export(args: argparse.Namespace) -> int:
    from llm_lab.core.package.hf_io import export_hf

    out = export_hf(args.package, args.out, overwrite=args.force)
    print(f"wrote Hugging Face model directory {out}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from llm_lab.core.package.hf_io import import_hf

    out = import_hf(args.hf_dir, args.out, overwrite=args.force)
    print(f"wrote package {out}")
    return 0
