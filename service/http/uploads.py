"""Predict requests of a model that takes files: a multipart/form-data body (one part per
input field, file parts streamed to disk as they arrive) or JSON whose file fields hold an
http(s) URL or a data: URI. The files are stored (`service.jobs.files`) and the job
carries their URLs; a sync call runs on local copies at once, and is kept as a record
(its files' URLs name its id)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from service.errors import BadRequest, InvalidInput, PayloadTooLarge, RequestTimeout
from service.http import sse, state
from service.http.io import PredictBody, parse_predict_body, read_body
from service.http.submit import Rules, keep_sync, past_wait, queue_job, sync_answer
from service.job import Outcome
from service.jobs import deadlines
from service.jobs.files import Files, call_folder
from service.jobs.intake import Taken
from service.jobs.runner import drain
from service.jobs.webhooks import check_url
from service.models.base import Model

#: Most parts in one multipart body.
MAX_PARTS = 64
#: The parts that are a request's options, not input fields.
_OPTIONS = ("webhook", "webhook_events", "priority")


async def predict_with_files(
    request: web.Request, model: Model, asked: Rules
) -> web.StreamResponse:
    """A predict request of a model that takes files: they are taken into a call folder,
    checked with the input, stored under the job's id (chosen first: their URLs name it),
    then the job is queued with their URLs, or run now on the local copies. Whatever
    fails on the way removes what was stored."""
    app = request.app
    files = app[state.FILES]
    prediction_id = app[state.PARTITIONS].new_id(asked.key)
    async with call_folder(files.settings.spool) as folder:
        keyed = bool(asked.key) and asked.queued
        body, taken = await receive(request, model, files, folder, keyed)
        value = model.validate(with_files(body.input, taken, [str(t.path) for t in taken]))
        if body.webhook:
            await check_url(body.webhook, app[state.WEBHOOK_POLICY])
        try:
            urls = await asyncio.gather(*(files.store_input(prediction_id, t) for t in taken))
            await files.keep_for(prediction_id, app[state.SETTINGS].job_timeout_seconds)
            stored = body._replace(input=with_files(body.input, taken, list(urls)))
            if asked.queued:
                digests = with_files(body.input, taken, [f"sha256:{t.digest}" for t in taken])
                used, answer = await queue_job(
                    request, model.name, stored, asked, prediction_id, digests
                )
                if used != prediction_id:  # an Idempotency-Key seen before: its job stands
                    await files.discard(prediction_id)
                return answer
            return await _run_now(request, model, stored, asked, value, prediction_id)
        except BaseException:
            await asyncio.shield(files.discard(prediction_id))
            raise


async def _run_now(
    request: web.Request,
    model: Model,
    body: PredictBody,
    asked: Rules,
    value: Any,
    prediction_id: str,
) -> web.StreamResponse:
    """A sync call on the local copies; the record kept (its files are under its id)."""
    app = request.app
    settings = app[state.SETTINGS]
    files = app[state.FILES]
    wait = deadlines.sync_wait(settings.job_timeout_seconds, asked.deadline)
    gate = app[state.SYNC_GATE]
    gate.enter(settings.max_sync_in_flight)
    batcher = app[state.BATCHERS][model.name]
    created = time.time()
    response: web.StreamResponse | None = None
    try:
        if model.streams or sse.wants_events(request):
            chunks = (
                batcher.stream(value) if model.streams else await sse.whole(batcher, value, wait)
            )
            if sse.wants_events(request):
                response, outcome = await sse.answer_now(
                    request, model.name, body.input, chunks, wait
                )
            else:
                limits = (settings.job_timeout_seconds, settings.max_stream_chunks)
                outcome = await drain(chunks, wait, *limits)
        else:
            future = batcher.run_one(value, wait.seconds)
            try:
                outcome = await future
            except TimeoutError:
                outcome = past_wait(batcher, future, wait)
    finally:
        gate.in_flight -= 1
    outcome = await files.outputs(prediction_id, outcome)
    await files.keep_for(prediction_id)
    kept = await keep_sync(request, model.name, body, created, outcome, prediction_id)
    if response is not None:
        return response
    return sync_answer(request, model.name, body.input, outcome, kept, created)


async def answer_with_files(
    request: web.Request, model: str, body: PredictBody, created: float, outcome: Outcome
) -> web.Response:
    """The sync answer of a model (without file inputs) that returned files: they are
    stored under a record of the call, the result holding their URLs."""
    app = request.app
    files = app[state.FILES]
    prediction_id = app[state.PARTITIONS].new_id()
    outcome = await files.outputs(prediction_id, outcome)
    await files.keep_for(prediction_id)
    kept = await keep_sync(request, model, body, created, outcome, prediction_id)
    return sync_answer(request, model, body.input, outcome, kept, created)


def with_files(raw: Any, taken: list[Taken], values: list[str]) -> Any:
    """The input with each taken file's field set to its value in ``values``."""
    if taken and taken[0].field == "":
        return values[0]
    if not isinstance(raw, dict):
        return raw
    return {**raw, **{t.field: v for t, v in zip(taken, values, strict=True)}}


async def receive(
    request: web.Request, model: Model, files: Files, folder: Path, keyed: bool
) -> tuple[PredictBody, list[Taken]]:
    """The request's body and its files, taken into ``folder`` (``keyed``: an
    Idempotency-Key will compare their digests)."""
    settings = request.app[state.SETTINGS]
    if request.content_type == "multipart/form-data":
        raw, options, taken = await _multipart(request, model, files, folder, keyed)
        body = parse_predict_body(orjson.dumps({"input": None, **options}))._replace(input=raw)
    else:
        body = parse_predict_body(await read_body(request, settings.body_timeout_seconds))
        raw, taken = body.input, []
    fields = model.file_fields
    if fields == ("",):
        if not taken:
            taken.append(await files.intake.take_value("", raw, folder, keyed))
        return body, taken
    if not isinstance(raw, dict):
        return body, taken  # the model's own check says what is wrong (422)
    given = {t.field for t in taken}
    for field in fields:
        if field not in given and raw.get(field) is not None:
            taken.append(await files.intake.take_value(field, raw[field], folder, keyed))
    return body, taken


async def _multipart(
    request: web.Request, model: Model, files: Files, folder: Path, keyed: bool
) -> tuple[Any, dict[str, Any], list[Taken]]:
    """Reads a multipart body: file parts (those of file fields that carry a file name)
    streamed to disk, other parts JSON values (or text, when they are not JSON); a part
    named ``input`` that is not a file is the input's other fields, as a JSON object."""
    settings = request.app[state.SETTINGS]
    idle = settings.body_timeout_seconds
    whole = model.file_fields == ("",)
    values: dict[str, Any] = {}
    options: dict[str, Any] = {}
    taken: list[Taken] = []
    base: Any = None
    budget = settings.max_body_bytes
    try:
        async for part in parts(request, idle):
            name = part.name or ""
            field = "" if whole and name == "input" else name
            if part.filename is not None and (field in model.file_fields):
                if any(t.field == field for t in taken):
                    raise BadRequest(f"The file of {name!r} is sent twice.")
                content_type = part.headers.get(hdrs.CONTENT_TYPE, "")
                taken.append(
                    await files.intake.take_part(
                        field, part, part.filename, content_type, folder, keyed, idle
                    )
                )
                continue
            value, budget = await small_part(part, idle, budget, settings.max_body_bytes)
            if name in _OPTIONS:
                options[name] = _option(name, value)
            elif name == "input":
                base = value
            else:
                values[name] = value
    except TimeoutError:
        raise RequestTimeout(f"The body stopped arriving for {idle:g} s.") from None
    except (ValueError, AssertionError, LookupError, HttpProcessingError) as exc:
        files.intake.refuse("malformed")
        raise BadRequest(f"The multipart/form-data body is malformed: {exc}") from None
    return _input(whole, base, values, taken), options, taken


def _input(whole: bool, base: Any, values: dict[str, Any], taken: list[Taken]) -> Any:
    """The input the parts make: a whole-input file's own (None: it is taken, as a file),
    else the part ``input`` (a JSON object) with the other fields' parts over it."""
    if whole:
        return base if not taken else None
    if base is not None and not isinstance(base, dict):
        raise InvalidInput("The part 'input' must be a JSON object of the other fields.")
    return {**(base or {}), **values}


def _option(name: str, value: Any) -> Any:
    """A request option given as a part: ``webhook_events`` as a JSON list or ``a,b``."""
    if name != "webhook_events" or isinstance(value, list):
        return value
    return [event.strip() for event in str(value).split(",") if event.strip()]


async def parts(request: web.Request, idle: float) -> AsyncIterator[BodyPartReader]:
    """The parts of a multipart/form-data body, each within ``idle`` seconds (TimeoutError
    otherwise); 400 for a part that nests another body, or past MAX_PARTS parts."""
    reader = await request.multipart()
    for _ in range(MAX_PARTS + 1):
        async with asyncio.timeout(idle):
            part = await reader.next()
        if part is None:
            return
        if not isinstance(part, BodyPartReader):
            raise BadRequest("A multipart body must not nest another one.")
        yield part
    raise BadRequest(f"A multipart body may have at most {MAX_PARTS} parts.")


async def small_part(part: BodyPartReader, idle: float, budget: int, limit: int) -> tuple[Any, int]:
    """A part that is not a file, read whole (each chunk within ``idle`` seconds) as long
    as every such part together stays within ``limit`` (MAX_BODY_BYTES; ``budget`` is
    what is left of it): its value, and what is left then."""
    data = bytearray()
    while chunk := await _next_chunk(part, idle):
        data += chunk
        budget -= len(chunk)
        if budget < 0:  # read no further
            raise PayloadTooLarge(
                f"The parts other than files are larger than MAX_BODY_BYTES ({limit} bytes)."
            )
    return _value(bytes(part.decode(data))), budget


async def _next_chunk(part: BodyPartReader, idle: float) -> bytes:
    async with asyncio.timeout(idle):
        return await part.read_chunk(64 * 1024)


def _value(data: bytes) -> Any:
    """A part's value: JSON, or its text when it is not JSON (``-F name=bob``)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise BadRequest("A part that is not a file must be UTF-8 text or JSON.") from None
