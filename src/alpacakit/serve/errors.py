"""Errors the server answers with, in OpenAI's shape.

Clients written for OpenAI (the `openai` SDK, LangChain, alpacakit's own endpoint teacher)
read `{"error": {"message", "type", "param", "code"}}` and the HTTP status: the SDK turns 400
into BadRequestError, 401 into AuthenticationError, 429 into RateLimitError (and retries it,
honouring Retry-After). Answering in that shape is what makes those clients show our message
instead of a generic failure.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An HTTP error answer. `param` names the offending request field, if any."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def queue_full(running: int, waiting: int) -> APIError:
    return APIError(
        429,
        f"The server is busy: {running} request(s) generating and {waiting} waiting, which is all it accepts. "
        "Retry after a short wait.",
        type="rate_limit_error",
        code="queue_full",
        headers={"Retry-After": "1"},
    )


def queue_timeout(waited_s: float) -> APIError:
    return APIError(
        503,
        f"The request waited {waited_s:.0f} s for a free generation slot and was dropped. "
        "Retry later or ask the operator to raise serve.queue_timeout_s.",
        type="server_error",
        code="queue_timeout",
        headers={"Retry-After": "5"},
    )
