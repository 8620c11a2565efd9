"""``llm-lab serve PACKAGE`` as a user runs it: a subprocess on a loopback port, called with httpx and openai."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_lab.cli import main as cli_main


@pytest.fixture(scope="module")
def cli_server(package_dir: Path) -> Iterator[str]:
    """``python -m llm_lab serve PACKAGE --port 0``; yields its base URL, read from uvicorn's start-up line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "llm_lab", "serve", str(package_dir), "--port", "0", "--model-name", "cli-model"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    lines: list[str] = []
    found: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            lines.append(line)
            match = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            if match:
                found.append(match.group(1))
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not started.wait(60):
            raise RuntimeError("llm-lab serve did not start:\n" + "".join(lines))
        yield found[0]
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # A graceful shutdown on SIGTERM (uvicorn then re-raises the signal, so the exit status may say SIGTERM).
    assert process.returncode in (0, -signal.SIGTERM), "".join(lines)
    assert "Application shutdown complete" in "".join(lines)


def test_cli_serves_the_package_on_loopback(cli_server: str, reference: Any) -> None:
    from llm_lab.core.decode import generate

    assert cli_server.startswith("http://127.0.0.1:")  # the default host
    assert httpx.get(f"{cli_server}/health").json()["model"] == "cli-model"
    body = httpx.post(
        f"{cli_server}/v1/completions",
        json={"model": "cli-model", "prompt": "to be", "max_tokens": 12, "temperature": 0},
        timeout=30,
    ).json()
    ids = reference.tokenizer.encode("to be")
    want = generate(reference.model, ids, 12, temperature=0, tokenizer=reference.tokenizer).texts[0]
    assert body["choices"][0]["text"] == want


def _half_closed_exchange(base_url: str, body: dict[str, Any]) -> tuple[str, str]:
    """Send one request, shut the socket down for writing (still reading), read the whole answer."""
    import json
    import socket

    port = int(base_url.rsplit(":", 1)[1])
    payload = json.dumps(body).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.sendall(head + payload)
        connection.shutdown(socket.SHUT_WR)  # done sending; still there to read
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    status_line, _, rest = received.decode().partition("\r\n")
    return status_line, rest.partition("\r\n\r\n")[2]


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_half_closes_still_gets_its_answer(cli_server: str, reference: Any, stream: bool) -> None:
    import json

    from llm_lab.core.decode import generate

    ids = reference.tokenizer.encode("to be")
    want = generate(reference.model, ids, 12, temperature=0, tokenizer=reference.tokenizer).texts[0]
    status, body = _half_closed_exchange(
        cli_server, {"prompt": "to be", "max_tokens": 12, "temperature": 0, "stream": stream}
    )
    assert status == "HTTP/1.1 200 OK"
    if stream:
        events = re.findall(r"^data: (.*)$", body, flags=re.MULTILINE)
        assert events[-1] == "[DONE]"
        assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1] if json.loads(e)["choices"]) == want
    else:
        assert json.loads(body)["choices"][0]["text"] == want


def test_openai_client_against_the_local_server(cli_server: str, reference: Any) -> None:
    openai = pytest.importorskip("openai", reason="the openai client is pinned in requirements-dev.txt")
    from llm_lab.core.decode import generate

    client = openai.OpenAI(base_url=f"{cli_server}/v1", api_key="not-needed-locally", max_retries=0)
    assert [model.id for model in client.models.list()] == ["cli-model"]

    completion = client.completions.create(model="cli-model", prompt="the quick", max_tokens=10, temperature=0)
    want = generate(
        reference.model, reference.tokenizer.encode("the quick"), 10, temperature=0, tokenizer=reference.tokenizer
    ).texts[0]
    assert completion.choices[0].text == want
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 10

    pieces = [
        chunk.choices[0].text
        for chunk in client.completions.create(
            model="cli-model", prompt="the quick", max_tokens=10, temperature=0, stream=True
        )
    ]
    assert "".join(pieces) == want and len(pieces) > 1

    sampled = client.completions.create(
        model="cli-model", prompt="a", max_tokens=8, n=2, seed=3, temperature=1.0, extra_body={"top_k": 5}
    )
    assert len(sampled.choices) == 2

    with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
        client.completions.create(model="cli-model", prompt="the", temperature=3.5)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="the")


def test_a_port_in_use_is_one_line_and_exit_2(package_dir: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "llm_lab", "serve", str(package_dir), "--port", str(port)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        f"llm-lab: error: port {port} on 127.0.0.1 is already in use (another server?); stop it or choose another "
        "with --port (0 picks a free one)\n"
    )


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        # each was uvicorn's log lines and exit code 3, after the model had loaded
        ("999.1.1.1", "8000", "--host 999.1.1.1: "),  # the resolver's words follow (they differ by system)
        ("999.1.1.1", "0", "--host 999.1.1.1: "),  # any free port: the host still counts
        ("a..b", "8000", "--host 'a..b' is not a host name: one of its dot-separated labels is empty or longer than "
         "63 characters"),
        ("192.0.2.1", "0", "cannot listen on 192.0.2.1 port 0: "),  # an address that is not this machine's
    ],
)
def test_a_host_that_cannot_be_bound_is_one_line_before_the_model_loads(
    package_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, host: str, port: str,
    message: str
) -> None:
    monkeypatch.setattr("llm_lab.serve.create_app", lambda *a, **k: pytest.fail("the model was loaded"))
    assert cli_main(["serve", str(package_dir), "--host", host, "--port", port]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"llm-lab: error: {message}") and err.count("\n") == 1


def test_cli_refuses_a_missing_package(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["serve", str(tmp_path / "nope")]) == 2
    assert "no package or run directory at" in capsys.readouterr().err


def test_cli_warns_only_when_binding_beyond_loopback(
    package_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """--host decides the warning; the server itself is replaced by a recorder (no socket is opened)."""
    runs: list[dict[str, Any]] = []
    apps: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: runs.append(kwargs))
    monkeypatch.setattr("llm_lab.cli.serve.check_port_free", lambda host, port: None)  # port 9 may need root
    monkeypatch.setattr("llm_lab.serve.create_app", lambda package, **kwargs: apps.append(kwargs) or "app")
    warning = "the server is reachable from other machines and has no authentication"
    loopbacks = ("127.0.0.1", "localhost", "::1", "127.1", "::ffff:127.0.0.1")  # the last two used to warn
    with caplog.at_level(logging.WARNING, logger="llm_lab.serve"):
        for host in loopbacks:
            assert cli_main(["serve", str(package_dir), "--host", host]) == 0
        assert warning not in caplog.text
        assert cli_main(["serve", str(package_dir), "--host", "0.0.0.0", "--port", "9"]) == 0
    assert f"binding 0.0.0.0: {warning}" in caplog.text
    assert {k: runs[-1][k] for k in ("host", "port", "log_level")} == {"host": "0.0.0.0", "port": 9,
                                                                       "log_level": "info"}  # fmt: skip
    assert runs[-1]["http"].__name__ == "HalfCloseTolerantProtocol"
    assert [run["host"] for run in runs] == [*loopbacks, "0.0.0.0"]
    assert apps[-1]["bind_host"] == "0.0.0.0" and apps[-1]["allow_origins"] == []


def test_cli_passes_the_access_and_request_options(package_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_lab.serve.app import RequestLimits

    apps: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: None)
    monkeypatch.setattr("llm_lab.cli.serve.check_port_free", lambda host, port: None)  # 8000 may be taken here
    monkeypatch.setattr("llm_lab.serve.create_app", lambda package, **kwargs: apps.append(kwargs) or "app")
    argv = ["serve", str(package_dir), "--allow-origin", "http://localhost:3000", "--allow-origin", "https://a.example",
            "--allow-host", "mybox.lan", "--max-request-tokens", "4096", "--max-request-memory-mb", "64"]  # fmt: skip
    assert cli_main(argv) == 0
    (kwargs,) = apps
    assert kwargs["allow_origins"] == ["http://localhost:3000", "https://a.example"]
    assert kwargs["allow_hosts"] == ["mybox.lan"] and kwargs["bind_host"] == "127.0.0.1"
    assert kwargs["limits"] == RequestLimits(max_tokens=4096, max_memory_bytes=64 * 2**20)


def test_cli_refuses_a_bad_origin(package_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["serve", str(package_dir), "--allow-origin", "localhost:3000"]) == 2
    assert capsys.readouterr().err == (
        "llm-lab: error: an origin is scheme://host[:port] (e.g. http://localhost:3000), got 'localhost:3000'\n"
    )


def test_cli_refuses_a_bad_device(package_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["serve", str(package_dir), "--device", "cuda0"]) == 2
    assert capsys.readouterr().err == (
        "llm-lab: error: device 'cuda0' is not a device name; use cpu, cuda, cuda:N or mps\n"
    )


def test_cli_help_names_the_loopback_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "127.0.0.1" in out and "--max-tokens-cap" in out and "--max-body-bytes" in out


def test_cli_rejects_bad_numbers(package_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["serve", str(package_dir), "--port", "70000"])
    assert "a port is at most 65535" in capsys.readouterr().err
    assert cli_main(["serve", str(package_dir), "--max-tokens-cap", "65"]) == 2  # refused before serving
    assert "max_tokens_cap must be between 1 and the model's context (64)" in capsys.readouterr().err


def test_cli_passes_the_batch_options(package_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_lab.serve.scheduler import BatchLimits

    apps: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: None)
    monkeypatch.setattr("llm_lab.serve.create_app", lambda package, **kwargs: apps.append(kwargs) or "app")
    argv = ["serve", str(package_dir), "--max-batch", "4", "--max-queue", "10", "--prefill-chunk", "16",
            "--batch-memory-mb", "256"]  # fmt: skip
    assert cli_main(argv) == 0
    assert apps[0]["batch"] == BatchLimits(max_batch=4, max_queue=10, prefill_chunk=16, memory_bytes=256 * 2**20)
