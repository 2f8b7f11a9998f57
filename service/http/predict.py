"""Prediction handlers: parse the request, run the model or queue the job, shape the answer."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from service.http import sse, state
from service.http.io import (
    PredictBody,
    async_mode,
    cancel_after,
    check_json,
    idempotency_key,
    parse_predict_body,
    prefer,
    read_body,
)
from service.http.sse import wants_events
from service.http.submit import Rules, keep_sync, past_wait, queue_job, sync_answer
from service.http.uploads import answer_with_files, predict_with_files
from service.jobs import deadlines
from service.jobs.files import has_files
from service.jobs.runner import drain
from service.jobs.webhooks import check_url
from service.settings import Settings


def rules(request: web.Request, settings: Settings, files: bool = False) -> Rules:
    """The request's headers, checked (400 or 415 for a bad one). ``files``: the model
    takes files, so a multipart/form-data body is welcome too."""
    respond_async, wait = prefer(request, settings.max_wait_seconds)
    queued = async_mode(request, respond_async)
    key = idempotency_key(request)  # checked in both modes; only async submits use it
    deadline = cancel_after(request)
    if not files or request.content_type != "multipart/form-data":
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
    if model.file_fields:
        return await predict_with_files(request, model, rules(request, settings, files=True))
    asked = rules(request, settings)
    body = parse_predict_body(await read_body(request, settings.body_timeout_seconds))
    value = model.validate(body.input)
    if body.webhook:
        await check_url(body.webhook, app[state.WEBHOOK_POLICY])
    if asked.queued:
        return (await queue_job(request, model.name, body, asked))[1]
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
        outcome = past_wait(batcher, future, wait)
    finally:
        gate.in_flight -= 1
    if has_files(outcome.payload):  # a model that returned files: kept under a record
        return await answer_with_files(request, model.name, body, created, outcome)
    if body.webhook:
        kept = await keep_sync(request, model.name, body, created, outcome)
        return sync_answer(request, model.name, body.input, outcome, kept, created)
    return sync_answer(request, model.name, body.input, outcome, began=created)


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
    kept = await keep_sync(request, model, body, created, outcome) if body.webhook else ""
    if wants_events(request):
        return response
    return sync_answer(request, model, body.input, outcome, kept, created)


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
