"""Reading requests and writing JSON answers: the parsing every handler shares."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable
from typing import Any, NamedTuple, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from service.errors import BadRequest, InvalidInput, RequestTimeout, UnsupportedMediaType
from service.http import state
from service.http.schemas import CANCEL_AFTER, BulkRequest, PredictRequest

M = TypeVar("M", bound=BaseModel)

#: Deepest nesting of arrays and objects accepted in a body. orjson reads 1024 levels but
#: writes only 255, and an input is written again inside records and answers (two or three
#: levels down): deeper input could be read, then fail every write that carries it.
MAX_JSON_DEPTH = 128


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def client_gone(request: web.Request) -> bool:
    """Whether the client closed its connection."""
    transport = request.transport
    return transport is None or transport.is_closing()


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


_DURATION = re.compile(CANCEL_AFTER)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def cancel_after(request: web.Request) -> float:
    """The Cancel-After header in seconds (0.0 when absent); 400 unless it is a duration
    above zero: a number and a unit (250ms, 30s, 5m, 1.5h)."""
    raw = request.headers.get("Cancel-After")
    if raw is None:
        return 0.0
    value = raw.strip()
    if not _DURATION.fullmatch(value):
        raise BadRequest(
            "Cancel-After must be a duration above zero: a number (at most 9 digits before "
            "the point, 6 after) and a unit, ms, s, m or h (250ms, 30s, 5m, 1.5h); "
            f"not {raw!r}."
        )
    number = value.rstrip("mhs")
    return float(number) * _UNIT_SECONDS[value[len(number) :]]


_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def tenant_of(request: web.Request) -> str:
    """The caller's tenant ("": the default one)."""
    tenant = request.get(state.TENANT)
    return tenant.name if tenant is not None else ""


def traced(request: web.Request) -> str:
    """The request span's traceparent, kept with a queued job ('' when traces are off)."""
    tracing = request.app.get(state.TRACING)
    return tracing.traceparent() if tracing is not None else ""


def idempotency_key(request: web.Request) -> str:
    """The Idempotency-Key header ('' when absent); 400 when it is not 1-255 visible ASCII."""
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return ""
    if not _IDEMPOTENCY_KEY.match(raw):
        raise BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters.")
    return raw


def body_digest(
    model: str, value: Any, webhook: str = "", events: str = "", priority: str = "normal"
) -> str:
    """What makes two submits 'the same request' for an Idempotency-Key: the model, the
    input and, when there is one, the webhook and its events, and a priority other than
    normal (a submit without them digests as it did before they existed, so keys stored
    then still match)."""
    canonical = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    if webhook:
        canonical += f"\0{webhook}\0{events}".encode()
    if priority != "normal":
        canonical += f"\0priority={priority}".encode()
    return hashlib.sha256(model.encode() + b"\0" + canonical).hexdigest()[:32]


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def read_body(request: web.Request, within: float) -> Awaitable[bytes]:
    """The request body, within ``within`` seconds (408 otherwise): a client trickling
    its body a byte at a time must not hold a request open for ever. A body that came
    whole with its headers, as small ones do, is read without a timer (and without a
    coroutine layer of this function's own: this is on every request's path)."""
    if request.content.is_eof():
        return request.read()
    return _read_within(request, within)


async def _read_within(request: web.Request, within: float) -> bytes:
    try:
        async with asyncio.timeout(within):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"The body did not arrive within {within:g} s.") from None


def check_json(request: web.Request) -> None:
    """415 unless the body is sent as JSON."""
    if not _is_json(request.content_type):
        raise UnsupportedMediaType("Send the body as application/json.")


class PredictBody(NamedTuple):
    """A checked predict body ("" and () when it names no webhook; priority "" when it
    gives none)."""

    input: Any
    webhook: str = ""
    webhook_events: tuple[str, ...] = ()
    priority: str = ""


class BulkBody(NamedTuple):
    """A checked bulk body; the webhook, if any, applies to every input."""

    inputs: list[Any]
    webhook: str = ""
    webhook_events: tuple[str, ...] = ()
    priority: str = ""


def parse_predict_body(raw: bytes) -> PredictBody:
    """The predict body; 400 or 422 when it is not one."""
    data = parse_json(raw)
    if type(data) is dict and len(data) == 1 and "input" in data:
        return PredictBody(data["input"])  # the usual case: no model to validate
    body = _validated(
        PredictRequest,
        data,
        "The body must be a JSON object with 'input' (and optionally 'webhook', "
        "'webhook_events', 'priority').",
    )
    return PredictBody(body.input, body.webhook, tuple(body.webhook_events), body.given_priority())


def parse_bulk_body(raw: bytes, most: int) -> BulkBody:
    """The bulk body: ``inputs``, a list of 1..``most`` items, and an optional webhook;
    400 or 422 otherwise."""
    data = parse_json(raw)
    if type(data) is dict and len(data) == 1 and type(data.get("inputs")) is list:
        body = BulkBody(data["inputs"])  # the usual case: no model to validate
    else:
        checked = _validated(
            BulkRequest,
            data,
            "The body must be a JSON object with 'inputs' (and optionally 'webhook', "
            "'webhook_events', 'priority').",
        )
        body = BulkBody(
            checked.inputs,
            checked.webhook,
            tuple(checked.webhook_events),
            checked.given_priority(),
        )
    if not 1 <= len(body.inputs) <= most:
        raise InvalidInput(
            f"'inputs' must hold 1 to {most} inputs.",
            [{"loc": ["inputs"], "msg": f"a list of 1 to {most} inputs", "type": "bulk"}],
        )
    return body


def parse_json(raw: bytes) -> Any:
    """A JSON body; 400 when it is not JSON, 422 when it nests too deep."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(_json_problem(exc)) from None
    # A body with fewer brackets than the limit cannot nest deeper: most skip the walk.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _depth(data) > MAX_JSON_DEPTH:
        raise InvalidInput(
            f"The body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels.",
            [{"loc": [], "msg": f"at most {MAX_JSON_DEPTH} levels of nesting", "type": "depth"}],
        )
    return data


def _depth(value: Any) -> int:
    """How deep arrays and objects nest in ``value`` (0 for a scalar); iterative, and it
    stops counting past the limit."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, list | dict):
            level += 1
            if level > deepest:
                deepest = level
                if deepest > MAX_JSON_DEPTH:
                    return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level) for child in children)
    return deepest


def _json_problem(exc: orjson.JSONDecodeError) -> str:
    """What is wrong with a body the JSON parser refused, in a user's words."""
    where = f"line {exc.lineno}, column {exc.colno}"
    if "UTF-8" in exc.msg:
        return "The body is not UTF-8 text: send JSON encoded as UTF-8."
    if "surrogate" in exc.msg:
        return (
            f"The body is not valid JSON: a \\u escape at {where} is half of a UTF-16 "
            "surrogate pair without its other half, which is not text."
        )
    if "recursion" in exc.msg or "depth" in exc.msg:
        return f"The body is not accepted: JSON nested deeper than {MAX_JSON_DEPTH} levels."
    return f"The body is not valid JSON: {exc.msg} at {where}."


def _validated(model: type[M], data: Any, message: str) -> M:
    """``data`` as ``model``; 422 with each field's error otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = [
            {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise InvalidInput(message, detail) from None
