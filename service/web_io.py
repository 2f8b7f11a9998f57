"""Reading requests and writing JSON answers: the parsing every handler shares."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from .errors import BadRequest, InvalidInput, UnsupportedMediaType
from .schemas import PredictRequest


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def async_mode(request: web.Request) -> bool:
    raw = request.headers.get("Async-Mode")
    if raw is None:
        return False
    value = raw.strip().lower()
    if value not in ("true", "false"):
        raise BadRequest(f"Async-Mode must be 'true' or 'false', not {raw!r}.")
    return value == "true"


_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def idempotency_key(request: web.Request) -> str:
    """The Idempotency-Key header ('' when absent); 400 when it is not 1-255 visible ASCII."""
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return ""
    if not _IDEMPOTENCY_KEY.match(raw):
        raise BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters.")
    return raw


def body_digest(model: str, value: Any) -> str:
    """What makes two submits 'the same request' for an Idempotency-Key."""
    canonical = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(model.encode() + b"\0" + canonical).hexdigest()[:32]


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def check_json(request: web.Request) -> None:
    """415 unless the body is sent as JSON."""
    if not _is_json(request.content_type):
        raise UnsupportedMediaType("Send the body as application/json.")


def parse_predict_body(raw: bytes) -> Any:
    """The ``input`` of a predict body; 400 or 422 when the body is not one."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}.") from None
    if type(data) is dict and len(data) == 1 and "input" in data:
        return data["input"]  # the usual case, checked without building a model
    try:
        return PredictRequest.model_validate(data).input
    except ValidationError as exc:
        detail = [
            {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise InvalidInput(
            "The body must be a JSON object with one field, 'input'.", detail
        ) from None
