"""``llm-lab serve PACKAGE``: the completions API and the playground page over HTTP (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import errno
import logging
import socket
from pathlib import Path

from llm_lab.cli.sample import add_dtype_argument, positive_int
from llm_lab.utils.errors import CLIError

logger = logging.getLogger("llm_lab.serve")


def _port(text: str) -> int:
    value = positive_int(text) if text != "0" else 0
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {value}")
    return value


def check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` the way uvicorn will (``SO_REUSEADDR``) and let it go again, so a port in use is one line
    before the model loads, not uvicorn's start-up lines and exit code 3. Port 0 (any free port) checks the host.

    Raises:
        CLIError: the port is taken, needs privileges, or the address is not this machine's.
    """
    # uvicorn binds an IPv6 socket for a host with a colon and an IPv4 one for anything else: resolve the same way.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise CLIError(f"--host {host}: {error.strerror}") from None
    except UnicodeError as error:  # a name the IDNA codec refuses: an empty label (a..b), a label of 64+ letters
        raise CLIError(f"--host {host[:80]!r} is not a host name: one of its dot-separated labels is empty or longer "
                       f"than 63 characters ({error})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise CLIError(f"port {port} on {host} is already in use (another server?); stop it or choose "
                               "another with --port (0 picks a free one)") from None  # fmt: skip
            if error.errno == errno.EACCES:
                raise CLIError(f"port {port} on {host} needs administrator rights; choose one above 1023") from None
            raise CLIError(f"cannot listen on {host} port {port}: {error.strerror}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a package: OpenAI-style /v1/completions and a playground page",
        description="Serve a model package (or a training run directory) over HTTP: POST /v1/completions in the "
        "OpenAI completions shape (streaming with server-sent events), GET /v1/models, GET /health, and a playground "
        "page at /. Requests are decoded together (continuous batching: each joins the running batch at a token "
        "boundary and leaves it when done, and gets exactly what it would get alone); past --max-batch sequences "
        "they wait in a first-come, first-served queue of --max-queue requests, past which they get 429.",
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
        "--max-pending",
        type=positive_int,
        default=64,
        help="queued inspection and echo-scoring calls before new ones get 503 (default 64)",
    )
    parser.add_argument(
        "--max-batch", type=positive_int, default=8, metavar="N", help="most sequences decoded at once (default 8)"
    )
    parser.add_argument(
        "--max-queue",
        type=positive_int,
        default=64,
        metavar="N",
        help="most requests waiting for a place in the batch; more get 429 with Retry-After (default 64)",
    )
    parser.add_argument(
        "--prefill-chunk",
        type=positive_int,
        default=32,
        metavar="TOKENS",
        help="prompt tokens read per decode step while others decode (default 32)",
    )
    parser.add_argument(
        "--batch-memory-mb",
        type=positive_int,
        default=1024,
        metavar="MB",
        help="most memory for the batch's KV caches (a full context per sequence); fewer than --max-batch "
        "sequences when it is less (default 1024)",
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
        from llm_lab.serve.completions import RequestLimits
        from llm_lab.serve.protocol import half_close_tolerant_protocol
        from llm_lab.serve.scheduler import BatchLimits
        from llm_lab.serve.security import host_is_loopback
    except ModuleNotFoundError as error:
        raise ValueError(
            f"serving needs FastAPI and uvicorn ({error.name} is missing): pip install \"foundry-llm[serve]\" "
            "(from a checkout: pip install -e \".[serve]\")"
        ) from None
    package = Path(args.package)
    if not package.exists():
        raise FileNotFoundError(f"no package or run directory at {package}")
    check_port_free(args.host, args.port)
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
        batch=BatchLimits(
            max_batch=args.max_batch,
            max_queue=args.max_queue,
            prefill_chunk=args.prefill_chunk,
            memory_bytes=args.batch_memory_mb * 2**20,
        ),
        bind_host=args.host,
        allow_hosts=args.allow_host,
        allow_origins=args.allow_origin,
    )
    # A client that half-closes its side after the request still gets its answer (llm_lab.serve.protocol).
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, http=half_close_tolerant_protocol())
    return 0
