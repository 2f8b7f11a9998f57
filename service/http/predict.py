"""Prediction handlers: parse the request, run the model or queue the job, shape the answer."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from service.errors import PredictionFailed, PredictionTimeout
from service.http import sse, state
from service.http.io import (
    PredictBody,
    async_mode,
    body_digest,
    cancel_after,
    check_json,
    client_gone,
    idempotency_key,
    json_response,
    parse_predict_body,
    prefer,
    read_body,
    tenant_of,
    traced,
)
from service.http.schemas import ACCEPTED_MESSAGE
from service.http.sse import wants_events
from service.job import JobRecord, NewJob, Outcome, Status, prediction_view
from service.jobs import deadlines
from service.jobs.runner import drain
from service.jobs.waiting import submit_and_wait
from service.jobs.webhooks import check_url
from service.redis.keys import idempotency_name
from service.settings import Settings


class Rules(NamedTuple):
    """What a predict request's headers ask for: queued or not, how long to wait for a
    queued job (Prefer: wait), its Idempotency-Key and its Cancel-After (seconds, 0: none)."""

    queued: bool
    wait: float
    key: str
    deadline: float


def rules(request: web.Request, settings: Settings) -> Rules:
    """The request's headers, checked (400 or 415 for a bad one)."""
    respond_async, wait = prefer(request, settings.max_wait_seconds)
    queued = async_mode(request, respond_async)
    key = idempotency_key(request)  # checked in both modes; only async submits use it
    deadline = cancel_after(request)
    check_json(request)
    return Rules(queued, wait, key, deadline)


async def predict(request: web.Request) -> web.StreamResponse:
    # Kept flat on purpose: every coroutine layer here costs each request (about 1 us, 2%
    # of a sync request: docs/benchmarks.md, "Fewer layers per request");
    # POST /predict comes here straight, POST /models/{name}/predict through one wrapper.
    # Parse (headers, body, input), then run now or queue, then answer.
    app = request.app
    settings = app[state.SETTINGS]
    model = app[state.MODELS].get(request.match_info.get("name"))
    asked = rules(request, settings)
    body = parse_predict_body(await read_body(request, settings.body_timeout_seconds))
    value = model.validate(body.input)
    if body.webhook:
        await check_url(body.webhook, app[state.WEBHOOK_POLICY])
    if asked.queued:
        return await _queue(request, model.name, body, asked)
    # Sync: within the concurrency bound, JOB_TIMEOUT_SECONDS and any Cancel-After (a
    # priority orders queued jobs: a sync request runs at once, whatever it says).
    wait = deadlines.sync_wait(settings.job_timeout_seconds, asked.deadline)
    gate = app[state.SYNC_GATE]
    gate.enter(settings.max_sync_in_flight)
    batcher = app[state.BATCHERS][model.name]
    created = time.time()
    if model.streams or wants_events(request):
        try:
            return await _streamed(request, body, value, wait, created)
        finally:
            gate.in_flight -= 1
    try:
        future = batcher.run_one(value, wait.seconds)
        outcome = await future
    except TimeoutError:
        if not wait.cancels:
            raise PredictionTimeout(
                f"The prediction took longer than {wait.seconds:g} s."
            ) from None
        outcome = deadlines.sync_cut(batcher.started(future))
    finally:
        gate.in_flight -= 1
    if body.webhook:
        kept = await _keep(request, model.name, body, created, outcome)
        return sync_answer(app, model.name, body.input, outcome, kept)
    return sync_answer(app, model.name, body.input, outcome)


def sync_answer(
    app: web.Application, model: str, raw: Any, outcome: Outcome, prediction_id: str = ""
) -> web.Response:
    """A sync request's answer (counted): 200 with its result; 500 when the model failed;
    504 with the status when its Cancel-After ended it. With a webhook, the id of its
    record too."""
    metrics = app[state.METRICS]
    if outcome.ok and not prediction_id:  # the usual answer, first
        metrics.count_prediction(model, "sync", True)
        return json_response({"input": raw, "result": orjson.Fragment(outcome.payload)})
    ended = deadlines.ended(outcome)
    metrics.count_prediction(model, "sync", outcome.ok or ended.value)
    extra = {"prediction_id": prediction_id} if prediction_id else {}
    if outcome.ok:
        return json_response({"input": raw, "result": orjson.Fragment(outcome.payload), **extra})
    if ended is not Status.FAILED:
        view = {"input": raw, "result": None}
        return json_response(
            {"error": outcome.error, "status": ended.value, "output": view, **extra}, status=504
        )
    if extra:
        return json_response({"error": outcome.error, **extra}, status=500)
    raise PredictionFailed(outcome.error)


async def _streamed(
    request: web.Request, body: PredictBody, value: Any, wait: deadlines.Wait, created: float
) -> web.StreamResponse:
    """A sync request of a model that streams, or one that asks for events: the chunks as
    events while the model yields them (Accept: text/event-stream), or the usual answer,
    its result the list of them. A model that does not stream, asked for events, sends its
    output as one event."""
    app = request.app
    settings = app[state.SETTINGS]
    batcher = app[state.BATCHERS][request.match_info.get("name") or app[state.MODELS].default]
    model = batcher.model.name
    if batcher.model.streams:
        chunks = batcher.stream(value)
    else:
        chunks = await sse.whole(batcher, value, wait)
    if wants_events(request):
        response, outcome = await sse.answer_now(request, model, body.input, chunks, wait)
    else:
        outcome = await drain(
            chunks, wait, settings.job_timeout_seconds, settings.max_stream_chunks
        )
    kept = await _keep(request, model, body, created, outcome) if body.webhook else ""
    if wants_events(request):
        return response
    return sync_answer(app, model, body.input, outcome, kept)


async def _queue(request: web.Request, model: str, body: PredictBody, asked: Rules) -> web.Response:
    """Queues the job (and waits for it with ``Prefer: wait``): 202 with its id, or 200
    with its record when it ended within the wait."""
    app = request.app
    events = ",".join(body.webhook_events) if body.webhook else ""
    priority = body.priority or "normal"
    tenant = tenant_of(request)
    key = asked.key
    job = NewJob(
        # With a key, in the key's partition: the key and its record share a slot.
        app[state.PARTITIONS].new_id(key),
        model,
        orjson.dumps(body.input),
        request[state.REQUEST_ID],
        idempotency_name(tenant, key) if key else "",
        body_digest(model, body.input, body.webhook, events, priority) if key else "",
        body.webhook,
        events,
        waited=asked.wait > 0,
        priority=priority,
        cancel_after=asked.deadline,
        tenant=tenant,
        traceparent=traced(request),
    )
    if asked.wait <= 0:
        return accepted(await app[state.QUEUE].submit(job))
    prediction_id, record = await submit_and_wait(
        app[state.QUEUE],
        app[state.RESULTS],
        app[state.WAITERS],
        job,
        asked.wait,
        gone=lambda: client_gone(request),
    )
    if record is not None and record.status.final:
        applied = {"Preference-Applied": f"wait={asked.wait:g}"}
        return json_response(prediction_view(record), headers=applied)
    return accepted(prediction_id)


def accepted(prediction_id: str) -> web.Response:
    """202: the job is queued (its record can be read back at once)."""
    return json_response(
        {"prediction_id": prediction_id, "message": ACCEPTED_MESSAGE},
        status=202,
        headers={"Location": f"/predict/{prediction_id}"},
    )


async def _keep(
    request: web.Request, model: str, body: PredictBody, created: float, outcome: Outcome
) -> str:
    """Records a sync request that named a webhook, final, with its delivery due (the
    dispatchers post it as they post a queued job's): answers its prediction id."""
    app = request.app
    ended = deadlines.ended(outcome)
    ran = ended is not Status.ABORTED
    record = JobRecord(
        prediction_id=app[state.PARTITIONS].new_id(),
        status=ended,
        model=model,
        input=body.input,
        created_at=created,
        started_at=created if ran else None,
        finished_at=time.time(),
        attempts=1 if ran else 0,
        error=outcome.error if ended is Status.FAILED else None,
        request_id=request[state.REQUEST_ID],
        webhook=body.webhook,
        tenant=tenant_of(request),
    )
    await app[state.RESULTS].keep_sync(record, ",".join(body.webhook_events), outcome)
    return record.prediction_id


# What can go wrong with a submitted body, on every route that takes one.
BODY_ERRORS = """
      "400": {$ref: "#/components/responses/BadRequest"}
      "401": {$ref: "#/components/responses/Unauthorized"}
      "408": {$ref: "#/components/responses/RequestTimeout"}
      "409": {$ref: "#/components/responses/Conflict"}
      "413": {$ref: "#/components/responses/PayloadTooLarge"}
      "415": {$ref: "#/components/responses/UnsupportedMediaType"}
      "422": {$ref: "#/components/responses/InvalidInput"}
      "429": {$ref: "#/components/responses/QueueFull"}
      "503": {$ref: "#/components/responses/Unavailable"}"""

# The two predict routes share one contract; their OpenAPI text is built from one tail.
_PREDICT_SPEC_TAIL = (
    """
      - $ref: "#/components/parameters/AsyncMode"
      - $ref: "#/components/parameters/IdempotencyKey"
      - $ref: "#/components/parameters/Prefer"
      - $ref: "#/components/parameters/CancelAfter"
      - $ref: "#/components/parameters/Traceparent"
    requestBody: {$ref: "#/components/requestBodies/Predict"}
    callbacks:
      predictionEnded: {$ref: "#/components/callbacks/PredictionEnded"}
    responses:
      "200": {$ref: "#/components/responses/SyncPrediction"}
      "202": {$ref: "#/components/responses/Accepted"}
      "404": {$ref: "#/components/responses/NotFound"}
      "500": {$ref: "#/components/responses/ServerError"}
      "504": {$ref: "#/components/responses/Timeout"}"""
    + BODY_ERRORS
)


predict.__doc__ = (
    """
    ---
    summary: Predict with the default model, now or queued
    description: >-
      With `Async-Mode: false` (or no header) the model runs at once and the answer holds its
      result; with `Accept: text/event-stream` too, the answer is a stream of events, each
      chunk of a model that streams sent as the model yields it. With `Async-Mode: true` the
      job is recorded and queued, and the answer holds a prediction id to poll at
      `GET /predict/{prediction_id}` (also in the `Location` header); its events, chunks
      included, at `GET /predict/{prediction_id}/events`.
    tags: [predictions]
    parameters:"""
    + _PREDICT_SPEC_TAIL
)


async def predict_with_model(request: web.Request) -> web.StreamResponse:
    return await predict(request)  # the model is named in the path


predict_with_model.__doc__ = (
    '''
    ---
    summary: Predict with a named model, now or queued
    description: >-
      The same contract as `POST /predict`, for the model named in the path
      (`GET /models` lists them). The job record names its model.
    tags: [predictions]
    parameters:
      - $ref: "#/components/parameters/ModelName"'''
    + _PREDICT_SPEC_TAIL
)
