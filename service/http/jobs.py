"""Handlers for one queued prediction: read it (or wait for it), follow it, cancel it."""

from __future__ import annotations

import time
import uuid

import orjson
from aiohttp import web

from service.errors import BadRequest, NotFound
from service.http import state
from service.http.io import client_gone, json_response, tenant_of
from service.http.schemas import NOT_FOUND_MESSAGE
from service.job import JobRecord, Status, prediction_view
from service.jobs.waiting import wait_for_record


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


def parse_id(raw: str) -> str:
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
      "404": {$ref: "#/components/responses/PredictionNotFound"}
      "503": {$ref: "#/components/responses/Unavailable"}
    """
    prediction_id = parse_id(request.match_info["prediction_id"])
    wait = _wait_param(request)
    tenant = tenant_of(request)
    if wait > 0 and request.app[state.PARTITIONS].tenanted:
        # Another tenant's job is not waited for: it is unknown to this caller.
        await _own_record(request, prediction_id, tenant)
    if wait > 0:
        app = request.app
        record = await wait_for_record(
            app[state.RESULTS],
            app[state.WAITERS],
            prediction_id,
            wait,
            gone=lambda: client_gone(request),
        )
        if record is None and client_gone(request):
            return web.Response(status=CLIENT_CLOSED)  # for the logs and metrics only
    else:
        record = await request.app[state.RESULTS].get(prediction_id)
    if record is None or record.tenant != tenant:
        raise NotFound(NOT_FOUND_MESSAGE)
    return json_response(prediction_view(record))


async def _own_record(request: web.Request, prediction_id: str, tenant: str) -> JobRecord:
    """The job's record, if the caller's tenant owns it; else NotFound, as for an unknown
    id (another tenant's job is never shown, nor said to exist)."""
    record = await request.app[state.RESULTS].get(prediction_id)
    if record is None or record.tenant != tenant:
        raise NotFound(NOT_FOUND_MESSAGE)
    return record


_KEEPALIVE_SECONDS = 15.0
#: The status logged and counted for a long-poll whose client left before the answer
#: (nginx's convention; never sent: there is no one to send it to).
CLIENT_CLOSED = 499


async def prediction_events(request: web.Request) -> web.StreamResponse:
    """
    ---
    summary: Follow a prediction's status as server-sent events
    description: >-
      `text/event-stream`: one `status` event with the record (the GET shape) now and at
      every change of status, until the job is final; then the stream ends. A comment line
      every 15 s keeps idle connections open.
    tags: [predictions]
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
      "404": {$ref: "#/components/responses/PredictionNotFound"}
      "503": {$ref: "#/components/responses/Unavailable"}
    """
    prediction_id = parse_id(request.match_info["prediction_id"])
    record = await _own_record(request, prediction_id, tenant_of(request))
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Request-ID": request[state.REQUEST_ID],
        }
    )
    await response.prepare(request)
    try:
        await _follow(request, response, prediction_id, record)
    except ConnectionResetError:  # the client went away: nothing more to send, no error
        return response
    await response.write_eof()
    return response


async def _follow(
    request: web.Request, response: web.StreamResponse, prediction_id: str, record: JobRecord
) -> None:
    """Writes a status event now and at each change, until the job is final."""
    results = request.app[state.RESULTS]
    waiters = request.app[state.WAITERS]
    sent: Status | None = None
    current: JobRecord | None = record
    while current is not None:
        if current.status is not sent:
            data = orjson.dumps(prediction_view(current))
            await response.write(b"event: status\ndata: " + data + b"\n\n")
            sent = current.status
        if current.status.final or waiters.released:  # released: the replica stops, and
            break  # the client reconnects to another one
        before = current.status
        current = await waiters.wait(
            prediction_id,
            _KEEPALIVE_SECONDS,
            lambda: results.get(prediction_id),
            until=lambda r, before=before: r is None or r.status is not before,  # type: ignore[misc]
            changes=True,
            gone=lambda: client_gone(request),
        )
        if client_gone(request):
            raise ConnectionResetError("the client closed the stream")
        if current is not None and current.status is before and not waiters.released:
            await response.write(b": still " + before.value.encode() + b"\n\n")


async def cancel_prediction(request: web.Request) -> web.Response:
    """
    ---
    summary: Cancel a queued prediction
    description: >-
      A job still queued is marked `canceled` and never runs (200, its record). A job
      already running or finished is left as it is: 409 with its current status. Canceling
      twice answers 200 both times.
    tags: [predictions]
    parameters:
      - $ref: "#/components/parameters/PredictionId"
    responses:
      "200":
        description: Canceled.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Prediction"}
      "401": {$ref: "#/components/responses/Unauthorized"}
      "404": {$ref: "#/components/responses/PredictionNotFound"}
      "409":
        description: Running or finished; not canceled.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/StatusConflict"}
      "503": {$ref: "#/components/responses/Unavailable"}
    """
    prediction_id = parse_id(request.match_info["prediction_id"])
    results = request.app[state.RESULTS]
    before, record = await results.cancel(prediction_id, time.time(), tenant_of(request))
    if not before or record is None:
        raise NotFound(NOT_FOUND_MESSAGE)
    if before not in ("queued", "canceled"):
        return json_response(
            {
                "error": f"The prediction is {record.status.value}; it cannot be canceled.",
                "status": record.status.value,
            },
            status=409,
        )
    return json_response(prediction_view(record))
