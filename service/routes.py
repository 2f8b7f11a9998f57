"""Prediction handlers: parse the request, run the model or queue the job, shape the answer."""

from __future__ import annotations

import time
import uuid

import orjson
from aiohttp import web

from . import state
from .errors import (
    BadRequest,
    InvalidInput,
    NotFound,
    Overloaded,
    PredictionFailed,
    PredictionTimeout,
)
from .ids import new_id
from .models import Model
from .queue import NewJob
from .schemas import ACCEPTED_MESSAGE, NOT_FOUND_MESSAGE, JobRecord, Status
from .web_io import (
    async_mode,
    body_digest,
    check_json,
    idempotency_key,
    json_response,
    parse_bulk_body,
    parse_predict_body,
    prefer,
)


async def _predict(request: web.Request, model: Model) -> web.Response:
    # Kept flat on purpose: every coroutine layer here costs each request (see README).
    settings = request.app[state.SETTINGS]
    respond_async, wait = prefer(request, settings.max_wait_seconds)
    queued = async_mode(request, respond_async)
    key = idempotency_key(request)  # checked in both modes; only async submits use it
    check_json(request)
    raw = parse_predict_body(await request.read())
    value = model.validate(raw)
    if queued:
        job = NewJob(
            new_id(),
            model.name,
            raw,
            time.time(),
            request[state.REQUEST_ID],
            key,
            body_digest(model.name, raw) if key else "",
        )
        prediction_id = await request.app[state.QUEUE].submit(job)
        if wait > 0:
            record = await _wait_for(request, prediction_id, wait)
            if record is not None and record.status.final:
                return json_response(
                    record.to_view(), headers={"Preference-Applied": f"wait={wait:g}"}
                )
        return json_response(
            {"prediction_id": prediction_id, "message": ACCEPTED_MESSAGE},
            status=202,
            headers={"Location": f"/predict/{prediction_id}"},
        )
    # Sync: within the concurrency bound and JOB_TIMEOUT_SECONDS.
    app = request.app
    gate = app[state.SYNC_GATE]
    if gate.in_flight >= settings.max_sync_in_flight:
        raise Overloaded(f"{gate.in_flight} predictions are running; try again shortly.")
    gate.in_flight += 1
    try:
        outcome = await app[state.BATCHERS][model.name].run_one(value, settings.job_timeout_seconds)
    except TimeoutError:
        raise PredictionTimeout(
            f"The prediction took longer than {settings.job_timeout_seconds:g} s."
        ) from None
    finally:
        gate.in_flight -= 1
    app[state.METRICS].count_prediction(model.name, "sync", outcome.ok)
    if not outcome.ok:
        raise PredictionFailed(outcome.error)
    return json_response({"input": raw, "result": orjson.Fragment(outcome.payload)})


# The two predict routes share one contract; their OpenAPI text is built from one tail.
_PREDICT_SPEC_TAIL = """
      - $ref: "#/components/parameters/AsyncMode"
      - $ref: "#/components/parameters/IdempotencyKey"
      - $ref: "#/components/parameters/Prefer"
    requestBody: {$ref: "#/components/requestBodies/Predict"}
    responses:
      "200": {$ref: "#/components/responses/SyncPrediction"}
      "202": {$ref: "#/components/responses/Accepted"}
      "400": {$ref: "#/components/responses/BadRequest"}
      "401": {$ref: "#/components/responses/Unauthorized"}
      "404": {$ref: "#/components/responses/NotFound"}
      "409": {$ref: "#/components/responses/Conflict"}
      "413": {$ref: "#/components/responses/PayloadTooLarge"}
      "415": {$ref: "#/components/responses/UnsupportedMediaType"}
      "422": {$ref: "#/components/responses/InvalidInput"}
      "429": {$ref: "#/components/responses/QueueFull"}
      "500": {$ref: "#/components/responses/ServerError"}
      "503": {$ref: "#/components/responses/Unavailable"}
      "504": {$ref: "#/components/responses/Timeout"}
"""


async def predict(request: web.Request) -> web.Response:
    return await _predict(request, request.app[state.MODELS].get())


predict.__doc__ = (
    """
    ---
    summary: Predict with the default model, now or queued
    description: >-
      With `Async-Mode: false` (or no header) the model runs at once and the answer holds its
      result. With `Async-Mode: true` the job is recorded and queued, and the answer holds a
      prediction id to poll at `GET /predict/{prediction_id}` (also in the `Location` header).
    tags: [predictions]
    security: [{}, {bearer: []}]
    parameters:"""
    + _PREDICT_SPEC_TAIL
)


async def predict_with_model(request: web.Request) -> web.Response:
    return await _predict(request, request.app[state.MODELS].get(request.match_info["name"]))


predict_with_model.__doc__ = (
    '''
    ---
    summary: Predict with a named model, now or queued
    description: >-
      The same contract as `POST /predict`, for the model named in the path
      (`GET /models` lists them). The job record names its model.
    tags: [predictions]
    security: [{}, {bearer: []}]
    parameters:
      - $ref: "#/components/parameters/ModelName"'''
    + _PREDICT_SPEC_TAIL
)


async def predict_batch(request: web.Request) -> web.Response:
    """
    ---
    summary: Queue many inputs for the default model in one request
    description: >-
      Every input is checked first; if any does not fit the model, the answer is 422 with
      each bad item's index in `detail[].loc` and nothing is queued. Otherwise all are
      queued in one Redis round trip and their prediction ids come back in input order.
    tags: [predictions]
    security: [{}, {bearer: []}]
    requestBody:
      required: true
      content:
        application/json:
          schema: {$ref: "#/components/schemas/BulkRequest"}
    responses:
      "202":
        description: All queued.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/BulkAccepted"}
      "400": {$ref: "#/components/responses/BadRequest"}
      "401": {$ref: "#/components/responses/Unauthorized"}
      "413": {$ref: "#/components/responses/PayloadTooLarge"}
      "415": {$ref: "#/components/responses/UnsupportedMediaType"}
      "422": {$ref: "#/components/responses/InvalidInput"}
      "429": {$ref: "#/components/responses/QueueFull"}
      "503": {$ref: "#/components/responses/Unavailable"}
    """
    app = request.app
    model = app[state.MODELS].get()
    check_json(request)
    inputs = parse_bulk_body(await request.read(), app[state.SETTINGS].max_bulk)
    problems = []
    for index, value in enumerate(inputs):
        try:
            model.validate(value)
        except InvalidInput as exc:
            for item in exc.detail:
                problems.append({**item, "loc": ["inputs", index, *item["loc"][1:]]})
    if problems:
        raise InvalidInput("Some inputs do not fit the model; nothing was queued.", problems)
    now, request_id = time.time(), request[state.REQUEST_ID]
    jobs = [NewJob(new_id(), model.name, value, now, request_id) for value in inputs]
    ids = await app[state.QUEUE].submit_all(jobs)
    return json_response({"prediction_ids": ids, "message": ACCEPTED_MESSAGE}, status=202)


async def _wait_for(request: web.Request, prediction_id: str, seconds: float) -> JobRecord | None:
    results = request.app[state.RESULTS]
    return await request.app[state.COMPLETIONS].wait(
        prediction_id, seconds, lambda: results.get(prediction_id)
    )


def _wait_param(request: web.Request) -> float:
    raw = request.query.get("wait")
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        raise BadRequest(f"wait={raw!r} is not a number of seconds.") from None
    if not 0 <= wait < float("inf"):
        raise BadRequest("wait must be zero or more seconds.")
    return min(wait, request.app[state.SETTINGS].max_wait_seconds)


def _parse_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise NotFound(NOT_FOUND_MESSAGE) from None


async def get_prediction(request: web.Request) -> web.Response:
    """
    ---
    summary: Read a queued prediction
    description: >-
      Answers the job's record: `queued` or `processing` (result "processing"), `done` (with
      the model's output) or `failed` (with `error`). Any replica answers for any job.
      Records expire after the result TTL.
    tags: [predictions]
    security: [{}, {bearer: []}]
    parameters:
      - $ref: "#/components/parameters/PredictionId"
      - $ref: "#/components/parameters/Wait"
    responses:
      "400": {$ref: "#/components/responses/BadRequest"}
      "401": {$ref: "#/components/responses/Unauthorized"}
      "200":
        description: The job's current record.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Prediction"}
      "404":
        description: Unknown or expired prediction id.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Error"}
            example: {error: Prediction ID not found.}
      "503": {$ref: "#/components/responses/Unavailable"}
    """
    prediction_id = _parse_id(request.match_info["prediction_id"])
    wait = _wait_param(request)
    if wait > 0:
        record = await _wait_for(request, prediction_id, wait)
    else:
        record = await request.app[state.RESULTS].get(prediction_id)
    if record is None:
        raise NotFound(NOT_FOUND_MESSAGE)
    return json_response(record.to_view())


_KEEPALIVE_SECONDS = 15.0


async def prediction_events(request: web.Request) -> web.StreamResponse:
    """
    ---
    summary: Follow a prediction's status as server-sent events
    description: >-
      `text/event-stream`: one `status` event with the record (the GET shape) now and at
      every change of status, until the job is final; then the stream ends. A comment line
      every 15 s keeps idle connections open.
    tags: [predictions]
    security: [{}, {bearer: []}]
    parameters:
      - $ref: "#/components/parameters/PredictionId"
    responses:
      "200":
        description: "Events: `event: status` with `data:` the record as JSON."
        content:
          text/event-stream:
            schema:
              type: object
              properties:
                event: {type: string, enum: [status]}
                data: {type: string, description: "The record (the GET shape) as JSON."}
      "401": {$ref: "#/components/responses/Unauthorized"}
      "404":
        description: Unknown or expired prediction id.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Error"}
      "503": {$ref: "#/components/responses/Unavailable"}
    """
    prediction_id = _parse_id(request.match_info["prediction_id"])
    results = request.app[state.RESULTS]
    record = await results.get(prediction_id)
    if record is None:
        raise NotFound(NOT_FOUND_MESSAGE)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Request-ID": request[state.REQUEST_ID],
        }
    )
    await response.prepare(request)
    completions = request.app[state.COMPLETIONS]
    sent: Status | None = None
    while record is not None:
        if record.status is not sent:
            data = orjson.dumps(record.to_view())
            await response.write(b"event: status\ndata: " + data + b"\n\n")
            sent = record.status
        if record.status.final:
            break
        before = record.status
        record = await completions.wait(
            prediction_id,
            _KEEPALIVE_SECONDS,
            lambda: results.get(prediction_id),
            until=lambda r, before=before: r is None or r.status is not before,  # type: ignore[misc]
        )
        if record is not None and record.status is before:
            await response.write(b": still " + before.value.encode() + b"\n\n")
    await response.write_eof()
    return response


async def cancel_prediction(request: web.Request) -> web.Response:
    """
    ---
    summary: Cancel a queued prediction
    description: >-
      A job still queued is marked `canceled` and never runs (200, its record). A job
      already running or finished is left as it is: 409 with its current status. Canceling
      twice answers 200 both times.
    tags: [predictions]
    security: [{}, {bearer: []}]
    parameters:
      - $ref: "#/components/parameters/PredictionId"
    responses:
      "200":
        description: Canceled.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Prediction"}
      "401": {$ref: "#/components/responses/Unauthorized"}
      "404":
        description: Unknown or expired prediction id.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Error"}
      "409":
        description: Running or finished; not canceled.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/StatusConflict"}
      "503": {$ref: "#/components/responses/Unavailable"}
    """
    prediction_id = _parse_id(request.match_info["prediction_id"])
    results = request.app[state.RESULTS]
    before = await results.cancel(prediction_id, time.time())
    if not before:
        raise NotFound(NOT_FOUND_MESSAGE)
    record = await results.get(prediction_id)
    if record is None:
        raise NotFound(NOT_FOUND_MESSAGE)
    if before not in ("queued", "canceled"):
        return json_response(
            {
                "error": f"The prediction is {record.status.value}; it cannot be canceled.",
                "status": record.status.value,
            },
            status=409,
        )
    return json_response(record.to_view())
