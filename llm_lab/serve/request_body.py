"""Reading a request's body, the same for every route: its size bounded before it is read
(:class:`BodySizeLimitMiddleware`, 413), declared as JSON (415), strict JSON (400) and then the route's schema (422
naming the field) (:func:`read_request`).
"""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_lab.serve.errors import APIError
from llm_lab.serve.schemas import describe_validation_error
from llm_lab.utils.json_input import loads_strict

DEFAULT_MAX_BODY_BYTES = 1_000_000
RequestModel = TypeVar("RequestModel", bound=BaseModel)


class BodySizeLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, before they are read into memory.

    A declared ``Content-Length`` over the limit is refused before any of the body is read; a chunked body is
    counted as it arrives and refused as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> JSONResponse:
        return APIError(
            413,
            f"request body is larger than the server's limit of {self.max_bytes} bytes; send a shorter prompt",
            code="request_too_large",
        ).response()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large()(scope, receive, send)
            return

        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLargeError:
            if not response_started:
                await self._too_large()(scope, receive, send)


class _BodyTooLargeError(Exception):
    pass


JSON_CONTENT_TYPES = ("application/json",)


def check_json_content_type(request: Request) -> None:
    """Refuse (415) a body not declared as JSON: a web page can send ``text/plain`` cross-site without a preflight."""
    declared = request.headers.get("content-type", "")
    media_type = declared.split(";", 1)[0].strip().lower()
    if media_type not in JSON_CONTENT_TYPES:
        shown = repr(declared) if declared else "none"
        raise APIError(
            415,
            f"Content-Type must be application/json (got {shown}); send the body as JSON",
            param="content-type",
            code="unsupported_media_type",
        )


async def read_request(request: Request, schema: type[RequestModel]) -> RequestModel:
    """The body of a JSON endpoint, checked in one place for every route: ``application/json`` (415), strict JSON
    (400: duplicate keys, NaN, deep nesting), then the schema (422 naming the field)."""
    check_json_content_type(request)
    try:
        payload = loads_strict(await request.body(), what="request body")
    except ValueError as error:
        raise APIError(400, str(error), code="invalid_json") from None
    try:
        return schema.model_validate(payload)
    except ValidationError as error:
        message, param = describe_validation_error(error)
        raise APIError(422, message, param=param, code="invalid_value") from None
