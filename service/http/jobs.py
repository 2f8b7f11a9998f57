"""Handlers for one queued prediction: read it (or wait for it), follow it, cancel it."""

from __future__ import annotations

import time
import uuid

from aiohttp import web

from service.errors import BadRequest, NotFound
from service.http import state
from service.http.io import client_gone, json_response, tenant_of
from service.http.schemas import NOT_FOUND_MESSAGE
from service.http.sse import follow, last_event_id, open_events
from service.job import JobRecord, prediction_view
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
        await own_record(request, prediction_id, tenant)
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


async def own_record(request: web.Request, prediction_id: str, tenant: str) -> JobRecord:
    """The job's record, if the caller's tenant owns it; else NotFound, as for an unknown
    id (another tenant's job is never shown, nor said to exist)."""
    record = await request.app[state.RESULTS].get(prediction_id)
    if record is None or record.tenant != tenant:
        raise NotFound(NOT_FOUND_MESSAGE)
    return record


#: How long a DELETE of a running stream waits for it to stop before it answers 202.
_STOP_WAIT_SECONDS = 10.0
#: The status logged and counted for a long-poll whose client left before the answer
#: (nginx's convention; never sent: there is no one to send it to).
CLIENT_CLOSED = 499


async def prediction_events(request: web.Request) -> web.StreamResponse:
    """
    ---
    summary: Follow a prediction as server-sent events (its status, and a model's chunks)
    description: >-
      `text/event-stream`: a `status` event with the record (the GET shape) now and at
      every change of status until the job is final. A job of a model that streams also
      gets an `output` event per chunk, in order, as the model yields it (`id:` the chunk's
      number, `data:` the chunk as JSON); the final status follows the last one. Send
      `Last-Event-ID` (or `?last_event_id=`) with the last id received to resume after it:
      no chunk twice, none missed, on any replica, while the job runs or after it ended,
      until its record expires. A comment line every 15 s keeps idle connections open.
    tags: [predictions]
    parameters:
      - $ref: "#/components/parameters/PredictionId"
      - $ref: "#/components/parameters/LastEventId"
      - $ref: "#/components/parameters/LastEventIdQuery"
    responses:
      "200": {$ref: "#/components/responses/JobEvents"}
      "400": {$ref: "#/components/responses/BadRequest"}
      "401": {$ref: "#/components/responses/Unauthorized"}
      "404": {$ref: "#/components/responses/PredictionNotFound"}
      "503": {$ref: "#/components/responses/Unavailable"}
    """
    prediction_id = parse_id(request.match_info["prediction_id"])
    after = last_event_id(request)
    await own_record(request, prediction_id, tenant_of(request))
    response = await open_events(request)
    try:
        await follow(request, response, prediction_id, after)
        await response.write_eof()
    except ConnectionResetError:  # the client went away: nothing more to send, no error
        pass
    return response


async def cancel_prediction(request: web.Request) -> web.Response:
    """
    ---
    summary: Cancel a queued prediction, or stop a running stream
    description: >-
      A job still queued is marked `canceled` and never runs (200, its record). A running
      job of a model that streams is stopped before its next chunk (its generator is
      closed) and ends `canceled`, keeping the chunks it made: 200 with its record once it
      stopped, or 202 with the record as it is if it has not within 10 s. Any other job
      already running or finished is left as it is: 409 with its current status. Canceling
      twice answers 200 both times.
    tags: [predictions]
    parameters:
      - $ref: "#/components/parameters/PredictionId"
    responses:
      "200":
        description: Canceled (or stopped).
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Prediction"}
      "202":
        description: A running stream was asked to stop and has not yet; its record.
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
    app = request.app
    streaming = app[state.MODELS].streaming
    before, record, stopping = await app[state.RESULTS].cancel(
        prediction_id, time.time(), tenant_of(request), streaming
    )
    if not before or record is None:
        raise NotFound(NOT_FOUND_MESSAGE)
    if stopping:  # a running stream stops before its next chunk: its end is waited for
        record = await wait_for_record(
            app[state.RESULTS], app[state.WAITERS], prediction_id, _STOP_WAIT_SECONDS
        )
        if record is None:
            raise NotFound(NOT_FOUND_MESSAGE)
        status = 200 if record.status.final else 202
        return json_response(prediction_view(record), status=status)
    if before == "queued":  # it will never run: counted as ended now, its files go now
        app[state.METRICS].count_prediction(
            record.model, "async", "canceled", tenant_of(request), prediction_id=prediction_id
        )
        if record.model in app[state.MODELS].with_files:
            await app[state.FILES].discard(prediction_id)
    if before not in ("queued", "canceled"):
        return json_response(
            {
                "error": f"The prediction is {record.status.value}; it cannot be canceled.",
                "status": record.status.value,
            },
            status=409,
        )
    return json_response(prediction_view(record))
