"""``Host``/``Origin``/``Content-Type`` checks and loopback detection (``llm_lab/serve/security.py``).

A web page the user visits must not be able to drive the server (a ``text/plain`` POST needs no CORS preflight)
nor read its answers through DNS rebinding (a foreign ``Host``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from llm_lab.core.package.io import load_model_package
from llm_lab.serve import create_app
from llm_lab.serve.security import AccessPolicy, host_is_loopback, normalize_origin

BODY = '{"prompt": "the", "max_tokens": 2, "temperature": 0}'


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1", True),  # the IPv4 short form: used to get the exposure warning
        ("127.0.1", True),
        ("2130706433", True),  # 127.0.0.1 as one number
        ("127.255.0.9", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),  # IPv4-mapped IPv6: used to get the warning too
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("127.0.0.1 x", False),
        ("", False),
    ],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert host_is_loopback(host) is loopback


def post_raw(base_url: str, headers: dict[str, str], content: str = BODY) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/completions", content=content, headers=headers, timeout=30)


def test_a_cross_site_text_plain_post_is_refused(server: Any) -> None:
    """The exact request of the issue: text/plain, foreign Host and Origin. It used to run the model (200)."""
    attack = post_raw(server.base_url, {"content-type": "text/plain", "host": "evil.example", "origin": "http://evil.example"})
    assert attack.status_code == 400
    error = attack.json()["error"]
    assert error["code"] == "invalid_host"
    assert error["message"].startswith("Host 'evil.example' does not name this server")

    # Each check on its own, with the other headers fine.
    own = server.base_url.removeprefix("http://")
    foreign_origin = post_raw(server.base_url, {"content-type": "application/json", "origin": "http://evil.example"})
    assert foreign_origin.status_code == 403
    assert foreign_origin.json()["error"] == {
        "message": "cross-origin request from 'http://evil.example' refused: a web page may call this server only "
        "when started with --allow-origin ORIGIN",
        "type": "invalid_request_error",
        "param": None,
        "code": "cross_origin",
    }
    assert post_raw(server.base_url, {"content-type": "application/json", "origin": "null"}).status_code == 403
    plain = post_raw(server.base_url, {"content-type": "text/plain", "host": own})
    assert plain.status_code == 415
    assert plain.json()["error"]["param"] == "content-type"
    assert plain.json()["error"]["message"] == (
        "Content-Type must be application/json (got 'text/plain'); send the body as JSON"
    )
    missing = post_raw(server.base_url, {"content-type": ""})
    assert missing.status_code == 415 and "(got none)" in missing.json()["error"]["message"]

    # DNS rebinding reads with GET: refused as well.
    rebound = httpx.get(f"{server.base_url}/health", headers={"host": "evil.example:8000"})
    assert rebound.status_code == 400 and rebound.json()["error"]["code"] == "invalid_host"


def test_the_servers_own_pages_and_plain_clients_are_served(server: Any) -> None:
    port = server.base_url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"127.1:{port}", "[::1]"):
        ok = post_raw(server.base_url, {"content-type": "application/json", "host": host})
        assert ok.status_code == 200, (host, ok.text)
    # The playground's fetch sends its own origin and JSON with a charset.
    same = post_raw(
        server.base_url,
        {"content-type": "application/json; charset=utf-8", "origin": server.base_url, "host": f"127.0.0.1:{port}"},
    )
    assert same.status_code == 200, same.text


@pytest.fixture(scope="module")
def loaded(package_dir: Path) -> tuple[Any, Any, Any]:
    return load_model_package(package_dir)


def test_an_allowed_origin_gets_cors_and_others_do_not(loaded: Any) -> None:
    app = create_app(loaded, allow_origins=["http://localhost:3000/"])
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        headers = {"content-type": "application/json", "origin": "http://localhost:3000"}
        allowed = client.post("/v1/completions", content=BODY, headers=headers)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "http://localhost:3000"
        preflight = client.options(
            "/v1/completions",
            headers={"origin": "http://localhost:3000", "access-control-request-method": "POST",
                     "access-control-request-headers": "content-type"},
        )  # fmt: skip
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        other = client.post("/v1/completions", content=BODY, headers={**headers, "origin": "http://localhost:3001"})
        assert other.status_code == 403 and "access-control-allow-origin" not in other.headers


def test_host_rules_follow_the_bound_address_and_allow_host(loaded: Any) -> None:
    json_headers = {"content-type": "application/json"}
    everywhere = create_app(loaded, bind_host="0.0.0.0", allow_hosts=["mybox.lan"])
    with TestClient(everywhere, base_url="http://192.168.1.5:8000") as client:
        assert client.post("/v1/completions", content=BODY, headers=json_headers).status_code == 200
        for host, status in (("mybox.lan:8000", 200), ("MyBox.lan", 200), ("evil.example:8000", 400)):
            response = client.post("/v1/completions", content=BODY, headers={**json_headers, "host": host})
            assert response.status_code == status, (host, response.text)
    one_address = create_app(loaded, bind_host="192.168.1.5")
    with TestClient(one_address, base_url="http://192.168.1.5:8000") as client:
        assert client.get("/health").status_code == 200
        assert client.get("/health", headers={"host": "10.1.1.1:8000"}).status_code == 400
        assert client.get("/health", headers={"host": "localhost:8000"}).status_code == 200


@pytest.mark.parametrize(
    ("origin", "message"),
    [("localhost:3000", "an origin is scheme://host"), ("http://a.example/path", "an origin is scheme://host"),
     ("ftp://a.example", "an origin is scheme://host")],
)  # fmt: skip
def test_bad_allowed_origins_are_refused(origin: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AccessPolicy(allowed_origins=[origin])


def test_origins_are_compared_normalized() -> None:
    assert normalize_origin("HTTP://LocalHost:80/") == "http://localhost"
    assert normalize_origin("https://[::1]:8443") == "https://[::1]:8443"
    policy = AccessPolicy(allowed_origins=["http://localhost:80"])
    assert policy.origin_refusal("http://LOCALHOST", "127.0.0.1:8000") is None
