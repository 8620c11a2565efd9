"""The HTTP/1.1 protocol ``llm-lab serve`` runs under uvicorn: uvicorn's own, with one change for half-closed clients.

A client may send its whole request and then shut down its side of the connection for writing while it still
reads (``shutdown(SHUT_WR)``: what ``curl --no-keepalive`` style tools, some proxies and shell pipelines such as
``nc -N`` do). TCP calls this a half-close; the client is still there. uvicorn's protocols close the connection on
that end-of-file, so the server took the client for gone: it cancelled the generation and sent nothing. Here, an
end-of-file that arrives after a complete request whose answer is not finished keeps the connection open for the
answer (the asyncio protocol contract: ``eof_received`` returning true). An end-of-file at any other moment (an
idle keep-alive connection, a request cut off half-way) closes it as before, and a client that closes the whole
connection is still seen as gone, which stops its generation.
"""

from __future__ import annotations

import asyncio

__all__ = ["half_close_tolerant_protocol"]


def half_close_tolerant_protocol() -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (``httptools`` where installed, else ``h11``), answering half-closed clients.

    Pass it as ``uvicorn.run(..., http=half_close_tolerant_protocol())``.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class HalfCloseTolerantProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        def eof_received(self) -> bool | None:
            cycle = self.cycle  # the request being answered (both of uvicorn's HTTP/1.1 protocols keep it here)
            if cycle is not None and not cycle.more_body and not cycle.response_complete:
                return True  # the request is complete and the client still reads: keep the connection to answer
            return super().eof_received()

    return HalfCloseTolerantProtocol
