"""The one place where exceptions become HTTP answers, all in the JSON error shape."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import ServiceError
from .routes import json_response

log = logging.getLogger(__name__)

_HTTP_MESSAGES = {
    400: "The request is malformed.",
    404: "No such route.",
    405: "This route does not accept that method.",
    413: "The body is too large.",
    415: "Unsupported content type.",
}
_REDIS_RETRY_AFTER = "1"


def _error(
    status: int, message: str, detail: Any = None, headers: dict[str, str] | None = None
) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return json_response(body, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ServiceError as exc:
        return _error(exc.status, exc.message, exc.detail)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        message = _HTTP_MESSAGES.get(exc.status) or exc.reason
        if exc.status == 413:
            message = f"The body is larger than {request.client_max_size} bytes."
        return _error(exc.status, message, headers=headers)
    except (RedisConnectionError, RedisTimeoutError) as exc:
        log.warning("Redis unavailable during %s %s: %s", request.method, request.path, exc)
        return _error(
            503,
            "The queue is unavailable; try again shortly.",
            headers={"Retry-After": _REDIS_RETRY_AFTER},
        )
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(500, "Internal server error.")
