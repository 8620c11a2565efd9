"""Helpers for the serving tests: a tiny saved package and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import uvicorn

from llm_lab.core.chat import add_chat_tokens
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.package.io import save_model_package
from llm_lab.core.tokenization import CharTokenizer

TEXT = (
    "the quick brown fox jumps over the lazy dog.\n"
    "a small model learns the patterns of a small text.\n"
    "to be, or not to be: that is the question.\n"
)


def make_package(path: Path, *, context_length: int = 64, seed: int = 0, chat: bool = False) -> Path:
    """Save a tiny, randomly initialised character model as a package (what ``llm-lab serve`` loads); with
    ``chat``, its tokenizer has the chat tokens (so the package has a chat template)."""
    tokenizer = CharTokenizer.from_text(TEXT)
    if chat:
        tokenizer = add_chat_tokens(tokenizer)
    config = MiniGPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=context_length, n_layer=2, n_head=2, n_embd=32
    )
    torch.manual_seed(seed)
    # A wider init than the default makes greedy text vary instead of repeating one character.
    model = MiniGPT(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.3)
    return save_model_package(path, config, tokenizer, model)


@dataclass
class RunningServer:
    base_url: str
    thread: threading.Thread
    server: Any


@contextlib.contextmanager
def serve_in_thread(app: Any, *, timeout_s: float = 20.0) -> Iterator[RunningServer]:
    """Run ``app`` under a real uvicorn server on a free 127.0.0.1 port, in a background thread.

    The socket is bound here (port 0: the kernel picks a free port) and handed to uvicorn, so there is no race
    between choosing a port and binding it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn-test")
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", thread, server)
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)
        sock.close()
