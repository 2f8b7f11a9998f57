"""How every request is answered: its id, the API key check, the one place where
exceptions become answers in the JSON error shape, the access log and the HTTP metrics."""

from __future__ import annotations

import functools
import logging
import re
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from service.errors import ServiceError, Unauthorized
from service.http import state
from service.http.io import json_response
from service.http.tenants import Tenants
from service.job import new_request_id
from service.redis.connection import unavailable

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
    request: web.Request,
    status: int,
    message: str,
    detail: Any = None,
    headers: dict[str, str] | None = None,
    exc: ServiceError | None = None,
) -> web.Response:
    if request.path.startswith(OPENAI_PREFIX):  # the OpenAI-compatible routes: its shape
        status, body = openai_error(status, message, detail, exc)
        return json_response(body, status=status, headers=headers)
    plain: dict[str, Any] = {"error": message}
    if detail is not None:
        plain["detail"] = detail
    return json_response(plain, status=status, headers=headers)


#: The paths of the OpenAI-compatible routes: their errors take OpenAI's shape.
OPENAI_PREFIX = "/v1/"
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
_OPENAI_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded", 503: "unavailable"}


def openai_error(
    status: int, message: str, detail: Any = None, exc: ServiceError | None = None
) -> tuple[int, dict[str, Any]]:
    """An error as OpenAI's API answers it: ``{"error": {"message", "type", "param",
    "code"}}``; an input that does not fit is a 400 there (422 here), its first field's
    place the ``param``."""
    param = exc.param if exc is not None else None
    if status == 422:
        status = 400
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            first = detail[0]
            where = ".".join(str(part) for part in first.get("loc", ()))
            message = f"{message} {where or 'the body'}: {first.get('msg')}"
            param = param or where or None
    kind = _OPENAI_TYPES.get(status) or (
        "server_error" if status >= 500 else "invalid_request_error"
    )
    code = (exc.code if exc is not None else "") or _OPENAI_CODES.get(status)
    return status, {"error": {"message": message, "type": kind, "param": param, "code": code}}


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_log = logging.getLogger("service.access")
#: The metrics' route label of a request that matched no route (one label, not a path each).
UNMATCHED = "unmatched"


def answered(handler: Handler, route: str, keys: Tenants | None = None) -> Handler:
    """``handler`` as it is registered: every request gets its id (taken from X-Request-ID
    or made), the key check when ``keys`` is given (the request's tenant, and its rate),
    the one place where exceptions become JSON error answers, then the access log line and
    the HTTP metrics under ``route``.

    A wrapper applied where routes are registered, not an aiohttp middleware: any
    middleware costs every request two more layers (aiohttp adds its own), this costs one.
    """

    async def answer(request: web.Request) -> web.StreamResponse:
        given = request.headers.get("X-Request-ID")
        request_id = given if given and _REQUEST_ID.match(given) else new_request_id()
        request[state.REQUEST_ID] = request_id
        began = time.perf_counter()
        try:
            if keys is not None:
                tenant = request[state.TENANT] = keys.check(request)
                if tenant.rate:
                    await request.app[state.LIMITER].admit(tenant)
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:  # a redirect: aiohttp sends it as it is
                _observe(request, exc, route, request_id, time.perf_counter() - began)
                raise
            response = _http_error(request, exc)
        except Exception as exc:
            response = _error_answer(request, exc)
        _observe(request, response, route, request_id, time.perf_counter() - began)
        return response

    return functools.wraps(handler)(answer)  # keeps the docstring the OpenAPI spec is read from


async def unmatched(request: web.Request) -> web.StreamResponse:
    """The last route, matching every path and method the others do not: 405 with the
    methods the path allows when some route has it, else 404 (both JSON, through
    ``answered``)."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def _observe(
    request: web.Request,
    response: web.StreamResponse,
    route: str,
    request_id: str,
    elapsed: float,
) -> None:
    if not response.prepared:  # a stream sets its own before it starts
        response.headers["X-Request-ID"] = request_id
    metrics = request.app[state.METRICS]
    metrics.observe_request(route, request.method, response.status, elapsed)
    tenant = request.get(state.TENANT)
    if tenant is not None and tenant.name:
        metrics.observe_tenant(tenant.name, response.status)
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "%s %s %d %.1fms",
            request.method,
            request.path,
            response.status,
            elapsed * 1000,
            extra={
                "request_id": request_id,
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_ms": round(elapsed * 1000, 3),
            },
        )


_OUTAGE_LOG_EVERY_SECONDS = 10.0
_outage = {"logged_at": 0.0, "since": 0}


def _log_outage(request: web.Request, exc: Exception) -> None:
    """At most one line per 10 s while Redis is away, not one per request."""
    now = time.monotonic()
    if now - _outage["logged_at"] >= _OUTAGE_LOG_EVERY_SECONDS:
        log.warning(
            "Redis unavailable (%s %s: %s); %d more such answers since the last line",
            request.method,
            request.path,
            exc,
            _outage["since"],
        )
        _outage["logged_at"], _outage["since"] = now, 0
    else:
        _outage["since"] += 1


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own errors (unknown route, wrong method, body too large) as JSON."""
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    message = _HTTP_MESSAGES.get(exc.status) or exc.reason
    if exc.status == 413:
        message = f"The body is larger than {request.client_max_size} bytes."
    return _error(request, exc.status, message, headers=headers)


def _error_answer(request: web.Request, exc: Exception) -> web.Response:
    if isinstance(exc, ServiceError):
        headers = None if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}
        if isinstance(exc, Unauthorized):
            headers = {"WWW-Authenticate": "Bearer"}
        return _error(request, exc.status, exc.message, exc.detail, headers, exc)
    reason = unavailable(exc)
    if reason is not None:
        _log_outage(request, exc)
        return _error(
            request,
            503,
            f"The queue is unavailable ({reason}); try again shortly.",
            headers={"Retry-After": _REDIS_RETRY_AFTER},
        )
    log.error("unhandled error in %s %s", request.method, request.path, exc_info=exc)
    return _error(request, 500, "Internal server error.")
