"""``llm-lab serve PACKAGE``: the completions API and the playground page over HTTP (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from llm_lab.cli.sample import add_dtype_argument, positive_int

logger = logging.getLogger("llm_lab.serve")


def _port(text: str) -> int:
    value = positive_int(text) if text != "0" else 0
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a package: OpenAI-style /v1/completions and a playground page",
        description="Serve a model package (or a training run directory) over HTTP: POST /v1/completions in the "
        "OpenAI completions shape (streaming with server-sent events), GET /v1/models, GET /health, and a playground "
        "page at /. Requests run one model call at a time, in arrival order.",
    )
    parser.add_argument("package", metavar="PACKAGE", help="a package directory (or a run directory)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)"
    )
    parser.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    parser.add_argument("--model-name", default=None, help="model id shown to clients (default: the folder name)")
    parser.add_argument(
        "--max-tokens-cap", type=positive_int, default=None, help="most new tokens per choice (default: the context)"
    )
    parser.add_argument(
        "--max-body-bytes", type=positive_int, default=1_000_000, help="larger request bodies get 413 (default 1 MB)"
    )
    parser.add_argument(
        "--max-pending", type=positive_int, default=64, help="queued requests before new ones get 503 (default 64)"
    )
    parser.add_argument(
        "--max-request-tokens",
        type=positive_int,
        default=32_768,
        metavar="N",
        help="most new tokens one request may ask for, prompts x n x max_tokens (default 32768)",
    )
    parser.add_argument(
        "--max-request-memory-mb",
        type=positive_int,
        default=512,
        metavar="MB",
        help="most KV-cache and sampling memory one request may need (default 512)",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. http://localhost:3000) call the API; repeatable. Other cross-origin "
        "requests get 403",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="accept requests whose Host header is NAME (besides loopback names and the bound address); repeatable",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default cpu)")
    add_dtype_argument(parser)
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from llm_lab.serve import create_app
        from llm_lab.serve.app import RequestLimits
        from llm_lab.serve.security import host_is_loopback
    except ModuleNotFoundError as error:
        raise ValueError(
            f"serving needs FastAPI and uvicorn ({error.name} is missing): pip install \"foundry-llm[serve]\" "
            "(from a checkout: pip install -e \".[serve]\")"
        ) from None
    package = Path(args.package)
    if not package.exists():
        raise FileNotFoundError(f"no package or run directory at {package}")
    if not host_is_loopback(args.host):
        logger.warning("binding %s: the server is reachable from other machines and has no authentication", args.host)
    app = create_app(
        package,
        model_name=args.model_name,
        max_tokens_cap=args.max_tokens_cap,
        max_body_bytes=args.max_body_bytes,
        max_pending=args.max_pending,
        device=args.device,
        decode_dtype=args.dtype,
        limits=RequestLimits(max_tokens=args.max_request_tokens, max_memory_bytes=args.max_request_memory_mb * 2**20),
        bind_host=args.host,
        allow_hosts=args.allow_host,
        allow_origins=args.allow_origin,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
