"""Reading requests and writing JSON answers: the parsing every handler shares."""

from __future__ import annotations

import hashlib
import re
from typing import Any, NamedTuple

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


def prefer(request: web.Request, max_wait: float) -> tuple[bool, float]:
    """RFC 7240 ``Prefer``: (respond-async asked for, seconds of ``wait=N``, capped)."""
    respond_async, wait = False, 0.0
    for header in request.headers.getall("Prefer", ()):
        for token in header.split(","):
            name, _, value = token.strip().partition("=")
            name = name.strip().lower()
            if name == "respond-async":
                respond_async = True
            elif name == "wait":
                try:
                    wait = float(value.strip().strip('"'))
                except ValueError:
                    raise BadRequest(
                        f"Prefer: wait={value!r} is not a number of seconds."
                    ) from None
                if not 0 <= wait < float("inf"):
                    raise BadRequest("Prefer: wait must be zero or more seconds.")
    return respond_async, min(wait, max_wait)


def async_mode(request: web.Request, respond_async: bool = False) -> bool:
    """Async-Mode (true/false, any case); when absent, Prefer: respond-async asks for it."""
    raw = request.headers.get("Async-Mode")
    if raw is None:
        return respond_async
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


def parse_bulk_body(raw: bytes, most: int) -> list[Any]:
    """The ``inputs`` of a bulk body: a list of 1..``most`` items; 400 or 422 otherwise."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}.") from None
    inputs = data.get("inputs") if type(data) is dict and set(data) == {"inputs"} else None
    if type(inputs) is not list or not 1 <= len(inputs) <= most:
        raise InvalidInput(
            f"The body must be a JSON object with one field, 'inputs': a list of 1 to {most} "
            "inputs.",
            [{"loc": ["inputs"], "msg": f"a list of 1 to {most} inputs", "type": "bulk"}],
        )
    return inputs


class PredictBody(NamedTuple):
    """A checked predict body ("" and () when it names no webhook)."""

    input: Any
    webhook: str = ""
    webhook_events: tuple[str, ...] = ()


def parse_predict_body(raw: bytes) -> PredictBody:
    """The predict body; 400 or 422 when it is not one."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}.") from None
    if type(data) is dict and len(data) == 1 and "input" in data:
        return PredictBody(data["input"])  # the usual case: no model to validate
    try:
        body = PredictRequest.model_validate(data)
    except ValidationError as exc:
        detail = [
            {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise InvalidInput(
            "The body must be a JSON object with 'input' (and optionally 'webhook', "
            "'webhook_events').",
            detail,
        ) from None
    return PredictBody(body.input, body.webhook, tuple(body.webhook_events))
