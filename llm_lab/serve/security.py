"""Who may talk to the server: the ``Host`` and ``Origin`` checks, and what counts as a loopback address.

The server has no authentication, so the network boundary is its only protection. Two browser attacks cross it
even when the server listens on 127.0.0.1 only:

* Cross-site requests: any web page the user visits can ``fetch("http://127.0.0.1:8000/v1/completions", ...)``.
  A ``text/plain`` POST needs no CORS preflight, so without checks the model runs for that page. The browser
  marks such requests with an ``Origin`` header; a request whose ``Origin`` is not the server's own (and not one
  the user allowed with ``--allow-origin``) is refused with 403. (The JSON endpoints also require
  ``Content-Type: application/json``, which a page can only send after a preflight this server never grants.)
* DNS rebinding: a page at ``evil.example`` re-points its own name to 127.0.0.1 and then reads the answers as
  same-origin. Its requests carry ``Host: evil.example``. So the ``Host`` header must name this server: a loopback
  name or address, the address it is bound to, any IP address when it listens on all of them (a rebinding
  attack always uses a name), or a name the user allowed with ``--allow-host``. Anything else is 421-refused.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from llm_lab.serve.errors import APIError

__all__ = [
    "LOOPBACK_NAMES",
    "AccessMiddleware",
    "AccessPolicy",
    "host_is_loopback",
    "ip_literal",
    "normalize_origin",
]

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})
_WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` spells, in any form the system's resolver reads without DNS, else ``None``.

    Handles what ``ipaddress`` alone refuses: IPv4 short forms (``127.1``, ``2130706433``), brackets
    (``[::1]``) and IPv4-mapped IPv6 (``::ffff:127.0.0.1``, returned as the IPv4 address it maps).
    """
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(ch.isspace() for ch in host):
        return None
    try:
        info = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    address = ipaddress.ip_address(info[0][4][0].split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def host_is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address or a ``Host`` name, without port) is this machine only.

    ``localhost``, any address in 127.0.0.0/8 in any spelling (``127.1``), ``::1`` and ``::ffff:127.0.0.1``.
    """
    if host.strip().lower() in LOOPBACK_NAMES:
        return True
    address = ip_literal(host)
    return address is not None and address.is_loopback


def _split_host_header(value: str) -> str:
    """The host part of a ``Host`` header value (``name:port``, ``[v6]:port``), lower-cased."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[: end + 1] if end >= 0 else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` lower-cased, default ports dropped; raises ``ValueError`` for anything else."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"an origin is scheme://host[:port] (e.g. http://localhost:3000), got {origin!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"origin {origin!r} has an invalid port") from None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


class AccessPolicy:
    """The ``Host`` and ``Origin`` rules of one server.

    Args:
        bind_host: the address the server listens on (``None``: loopback only, as in tests and ``create_app``).
        allowed_hosts: more ``Host`` names to accept (``--allow-host``), e.g. a machine name on a trusted network.
        allowed_origins: web origins whose pages may call the API (``--allow-origin``), e.g.
            ``http://localhost:3000`` for a front end under development. They also get CORS headers.
    """

    def __init__(
        self,
        bind_host: str | None = None,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
    ) -> None:
        self.bind_host = bind_host
        self.allowed_hosts = {h.strip().lower() for h in allowed_hosts}
        for host in self.allowed_hosts:
            if not host or "/" in host or any(ch.isspace() for ch in host):
                raise ValueError(f"allowed host {host!r} is not a host name or address")
        self.allowed_origins = [normalize_origin(o) for o in allowed_origins]
        self.any_ip = bind_host is not None and bind_host.strip() in _WILDCARD_BINDS

    def host_refusal(self, host_header: str | None) -> str | None:
        """Why a request with this ``Host`` header is refused, or ``None`` when it is accepted."""
        if not host_header:
            return "the request has no Host header"
        host = _split_host_header(host_header)
        if host_is_loopback(host) or host in self.allowed_hosts:
            return None
        if self.bind_host is not None and host == _split_host_header(self.bind_host):
            return None
        address = ip_literal(host)
        if address is not None and (self.any_ip or address == ip_literal(self.bind_host or "127.0.0.1")):
            return None
        return (
            f"Host {host_header!r} does not name this server (it answers to loopback names, its own address and "
            "names allowed with --allow-host); this protects against DNS rebinding"
        )

    def origin_refusal(self, origin: str | None, host_header: str | None) -> str | None:
        """Why a request from this ``Origin`` is refused, or ``None``: no origin, its own origin, or an allowed one."""
        if origin is None:
            return None  # not a browser's cross-site request (curl, the openai client, server-to-server)
        try:
            normalized = normalize_origin(origin)
        except ValueError:
            normalized = None
        if normalized is not None:
            if normalized in self.allowed_origins:
                return None
            own = urlsplit(normalized).netloc
            host = (host_header or "").strip().lower()
            if host and own in (host, host.removesuffix(":80"), host.removesuffix(":443")):
                return None  # the server's own pages (the playground)
        return (
            f"cross-origin request from {origin!r} refused: a web page may call this server only when started with "
            "--allow-origin ORIGIN"
        )


class AccessMiddleware:
    """ASGI middleware that applies an :class:`AccessPolicy` to every HTTP request before the app sees it.

    A bad ``Host`` is 400 (``code: "invalid_host"``), a foreign ``Origin`` 403 (``code: "cross_origin"``), both in
    the server's OpenAI error shape and before any of the body is read.
    """

    def __init__(self, app: Any, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {}
        for name, value in scope.get("headers") or []:
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        host = headers.get("host")
        refusal = self.policy.host_refusal(host)
        if refusal is not None:
            await APIError(400, refusal, code="invalid_host").response()(scope, receive, send)
            return
        refusal = self.policy.origin_refusal(headers.get("origin"), host)
        if refusal is not None:
            await APIError(403, refusal, code="cross_origin").response()(scope, receive, send)
            return
        await self.app(scope, receive, send)
