"""``llm-lab export-gguf PACKAGE OUT.gguf``: a package as one GGUF file for llama.cpp, Ollama and LM Studio."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export-gguf",
        help="write a package as a GGUF file for llama.cpp (Llama or GPT-2 family, byte-level BPE tokenizer)",
        description="Write a package as one GGUF file (weights, hyperparameters and tokenizer) that llama.cpp runs: "
        "RoPE/RMSNorm/SwiGLU models as llama.cpp's llama architecture, learned-position/LayerNorm/tanh-GELU models "
        "as its gpt2 architecture. Anything else is refused with the reason.",
    )
    export.add_argument("package", metavar="PACKAGE", help="the package directory")
    export.add_argument("out", metavar="OUT.gguf", help="the file to write (renamed into place when complete)")
    export.add_argument(
        "--dtype",
        default="f32",
        metavar="DTYPE",
        help="matrices as f32 (default), f16 or q8_0 (8-bit blocks of 32); norms and biases stay f32",
    )
    export.add_argument(
        "--force", action="store_true", help="replace a GGUF file this command wrote at OUT (nothing else)"
    )
    export.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from llm_lab.core.package.gguf_io import export_gguf

    out = export_gguf(args.package, args.out, dtype=args.dtype, overwrite=args.force)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {args.dtype}); run it with: llama-cli -m {out}")
    return 0
