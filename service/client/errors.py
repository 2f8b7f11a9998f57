"""The client's errors: one class per kind of answer, carrying the server's status,
message and detail."""

from __future__ import annotations

from typing import Any

import aiohttp


class ClientError(Exception):
    """The server answered an error; ``status`` and ``message`` are its own."""

    def __init__(self, status: int, message: str, detail: Any = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.detail = detail


class BadRequestError(ClientError):
    """400: a malformed request."""


class UnauthorizedError(ClientError):
    """401: the API key is missing or wrong."""


class NotFoundError(ClientError):
    """404: unknown model, prediction or route."""


class ConflictError(ClientError):
    """409: an Idempotency-Key reused with another body, or a job too far along to cancel."""


class InvalidInputError(ClientError):
    """422: the input does not fit the model; ``detail`` lists the field errors."""


class OverloadedError(ClientError):
    """429/503: queue full, too busy, or Redis unavailable; retry later."""


class PredictionFailedError(ClientError):
    """500, or a queued job that ended failed: the model raised."""


class PredictionTimeoutError(ClientError):
    """504, or a job that was not final within Job.result()'s timeout."""


class JobCanceledError(ClientError):
    """The job was canceled before it ran."""


_BY_STATUS: dict[int, type[ClientError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    404: NotFoundError,
    409: ConflictError,
    422: InvalidInputError,
    429: OverloadedError,
    500: PredictionFailedError,
    503: OverloadedError,
    504: PredictionTimeoutError,
}


def error_for(status: int, body: Any) -> ClientError:
    message = body.get("error", "") if isinstance(body, dict) else str(body)
    detail = body.get("detail") if isinstance(body, dict) else None
    return _BY_STATUS.get(status, ClientError)(status, message, detail)


async def body_of(response: aiohttp.ClientResponse) -> Any:
    """An answer's JSON body, or ``{"error": <its text>}`` when it is not JSON."""
    try:
        return await response.json(content_type=None)
    except ValueError:
        return {"error": await response.text()}


async def raise_for(response: aiohttp.ClientResponse) -> None:
    """Raises the error an answer of status 400 or more stands for."""
    if response.status >= 400:
        raise error_for(response.status, await body_of(response))
