"""The server's error in OpenAI's shape, below every module that raises or answers it (the app, its middleware)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from llm_lab.core.decode.processors import NonFiniteScoresError


class APIError(Exception):
    """An error answered in OpenAI's shape.

    Args:
        status_code: the HTTP status.
        message: what went wrong and what to change.
        param: the request field at fault, if one is.
        error_type: OpenAI's error ``type`` (``invalid_request_error`` for client mistakes).
        code: a short machine-readable code, if any.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        param: str | None = None,
        error_type: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.error_type = error_type
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code)


def generation_failure(error: BaseException) -> APIError:
    """The 500 for a model call that failed; a model whose scores are NaN says so, without a Python type name."""
    if isinstance(error, NonFiniteScoresError):
        return APIError(500, str(error), error_type="server_error", code="non_finite_scores")
    return APIError(
        500, f"generation failed: {type(error).__name__}: {error}", error_type="server_error", code="internal_error"
    )
