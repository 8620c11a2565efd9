"""The completions server on every device (the ``device`` fixture: CPU, CUDA, MPS).

``llm-lab serve PACKAGE --device D`` hands ``D`` to ``create_app(package, device=D)``; here that app runs under a
real uvicorn server (and, in the slow suite, the command itself in a subprocess). Its model sits on the device, a
greedy completion picks the fp32 CPU tokens (up to near-ties within the fp32 tolerance,
``assert_greedy_within_tolerance``), and the streamed text is the same completion.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from serve_helpers import serve_in_thread

from llm_lab.serve import create_app

PROMPT, MAX_TOKENS = "the quick", 25


def test_served_on_the_device_answers_the_cpu_greedy_text(
    device, package_dir: Path, reference: Any, assert_greedy_within_tolerance
) -> None:
    app = create_app(package_dir, device=str(device))
    assert app.state.engine.device.type == device.type
    body = {"prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
    with serve_in_thread(app) as server:
        plain = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=60)
        streamed = httpx.post(f"{server.base_url}/v1/completions", json=body | {"stream": True}, timeout=60)
    assert plain.status_code == 200, plain.text
    text = plain.json()["choices"][0]["text"]
    new_ids = reference.tokenizer.encode(text)
    assert len(new_ids) == MAX_TOKENS  # a character model: one character per token
    assert_greedy_within_tolerance(reference.model, reference.tokenizer.encode(PROMPT), new_ids, torch.float32)

    assert streamed.status_code == 200
    events = [e.removeprefix("data: ") for e in streamed.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == text


@pytest.mark.slow
def test_llm_lab_serve_with_device_flag(device, package_dir: Path, reference: Any, assert_greedy_within_tolerance):
    """``python -m llm_lab serve PACKAGE --device D --port 0`` as a user starts it: the greedy answer is the CPU's."""
    command = [sys.executable, "-m", "llm_lab", "serve", str(package_dir), "--port", "0", "--device", str(device)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    lines: list[str] = []
    try:
        for line in process.stdout:  # type: ignore[union-attr]  (uvicorn names its port once it listens)
            lines.append(line)
            if match := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line):
                break
        else:
            raise AssertionError("llm-lab serve exited before listening:\n" + "".join(lines))
        body = {"prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
        answer = httpx.post(f"{match.group(1)}/v1/completions", json=body, timeout=60)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert answer.status_code == 200, answer.text
    new_ids = reference.tokenizer.encode(answer.json()["choices"][0]["text"])
    assert len(new_ids) == MAX_TOKENS
    assert_greedy_within_tolerance(reference.model, reference.tokenizer.encode(PROMPT), new_ids, torch.float32)
