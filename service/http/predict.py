"""Prediction handlers: parse the request, run the model or queue the job, shape the answer."""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from service.errors import InvalidInput, Overloaded, PredictionFailed, PredictionTimeout
from service.http import state
from service.http.io import (
    PredictBody,
    async_mode,
    body_digest,
    cancel_after,
    check_json,
    client_gone,
    idempotency_key,
    json_response,
    parse_bulk_body,
    parse_predict_body,
    prefer,
    read_body,
    tenant_of,
    traced,
)
from service.http.schemas import ACCEPTED_MESSAGE, prediction_view
from service.job import JobRecord, NewJob, Outcome, Status
from service.jobs.waiting import submit_and_wait
from service.jobs.webhooks import check_url
from service.redis.keys import idempotency_name


async def predict(request: web.Request) -> web.Response:
    # Kept flat on purpose: every coroutine layer here costs each request (see the README);
    # POST /predict comes here straight, POST /models/{name}/predict through one wrapper.
    app = request.app
    settings = app[state.SETTINGS]
    model = app[state.MODELS].get(request.match_info.get("name"))
    respond_async, wait = prefer(request, settings.max_wait_seconds)
    queued = async_mode(request, respond_async)
    key = idempotency_key(request)  # checked in both modes; only async submits use it
    deadline = cancel_after(request)
    check_json(request)
    body = parse_predict_body(await read_body(request, settings.body_timeout_seconds))
    value = model.validate(body.input)
    if body.webhook:
        await check_url(body.webhook, settings)
    if queued:
        return await _queue(request, model.name, body, key, deadline, wait)
    # Sync: within the concurrency bound, JOB_TIMEOUT_SECONDS and any Cancel-After (a
    # priority orders queued jobs: a sync request runs at once, whatever it says).
    gate = app[state.SYNC_GATE]
    if gate.in_flight >= settings.max_sync_in_flight:
        raise Overloaded(f"{gate.in_flight} predictions are running; try again shortly.")
    limit = settings.job_timeout_seconds
    cut = deadline if deadline and (not limit or deadline < limit) else 0.0
    batcher = app[state.BATCHERS][model.name]
    created = time.time()
    gate.in_flight += 1
    try:
        future = batcher.run_one(value, cut or limit)
        outcome = await future
    except TimeoutError:
        if not cut:
            raise PredictionTimeout(f"The prediction took longer than {limit:g} s.") from None
        outcome = _past_cancel_after(batcher.started(future), deadline)
    finally:
        gate.in_flight -= 1
    ended = _SYNC_ENDS.get(outcome.error, "done" if outcome.ok else "failed")
    app[state.METRICS].count_prediction(model.name, "sync", outcome.ok or ended)
    extra = {}
    if body.webhook:
        extra["prediction_id"] = await _keep(request, model.name, body, created, outcome, ended)
    if ended != "done" and ended != "failed":
        view = {"input": body.input, "result": None}
        answer = {"error": outcome.error, "status": ended, "output": view, **extra}
        return json_response(answer, status=504)
    if not outcome.ok:
        if extra:
            return json_response({"error": outcome.error, **extra}, status=500)
        raise PredictionFailed(outcome.error)
    return json_response({"input": body.input, "result": orjson.Fragment(outcome.payload), **extra})


#: The final status of a sync request cut by its Cancel-After, by the outcome's error.
_ABORTED = "aborted: not started within its Cancel-After"
_CANCELED = "canceled: ran past its Cancel-After"
_SYNC_ENDS = {_ABORTED: "aborted", _CANCELED: "canceled"}


def _past_cancel_after(started: bool, deadline: float) -> Outcome:
    """The outcome of a sync request whose Cancel-After passed: aborted if its batch had not
    started (its input never reaches the model), else canceled (the call's result is
    dropped; a process model's call is cut short)."""
    return Outcome(ok=False, error=_CANCELED if started else _ABORTED, canceled=started)


async def _queue(
    request: web.Request,
    model: str,
    body: PredictBody,
    key: str,
    deadline: float,
    wait: float,
) -> web.Response:
    """Queues the job (and waits for it with ``Prefer: wait``): 202 with its id, or 200
    with its record when it ended within the wait."""
    app = request.app
    events = ",".join(body.webhook_events) if body.webhook else ""
    priority = body.priority or "normal"
    tenant = tenant_of(request)
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
        waited=wait > 0,
        priority=priority,
        cancel_after=deadline,
        tenant=tenant,
        traceparent=traced(request),
    )
    if wait <= 0:
        prediction_id = await app[state.QUEUE].submit(job)
    else:
        prediction_id, record = await submit_and_wait(
            app[state.QUEUE],
            app[state.RESULTS],
            app[state.COMPLETIONS],
            job,
            wait,
            gone=lambda: client_gone(request),
        )
        if record is not None and record.status.final:
            return json_response(
                prediction_view(record), headers={"Preference-Applied": f"wait={wait:g}"}
            )
    return json_response(
        {"prediction_id": prediction_id, "message": ACCEPTED_MESSAGE},
        status=202,
        headers={"Location": f"/predict/{prediction_id}"},
    )


async def _keep(
    request: web.Request,
    model: str,
    body: PredictBody,
    created: float,
    outcome: Outcome,
    ended: str,
) -> str:
    """Records a sync request that named a webhook, final, with its delivery due (the
    dispatchers post it as they post a queued job's): answers its prediction id."""
    app = request.app
    now = time.time()
    record = JobRecord(
        prediction_id=app[state.PARTITIONS].new_id(),
        status=Status(ended),
        model=model,
        input=body.input,
        created_at=created,
        started_at=None if ended == "aborted" else created,
        finished_at=now,
        attempts=0 if ended == "aborted" else 1,
        error=None if outcome.ok or ended != "failed" else outcome.error,
        request_id=request[state.REQUEST_ID],
        webhook=body.webhook,
        tenant=tenant_of(request),
    )
    await app[state.RESULTS].keep_sync(record, ",".join(body.webhook_events), outcome)
    return record.prediction_id


# What can go wrong with a submitted body, on every route that takes one.
_BODY_ERRORS = """
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
    + _BODY_ERRORS
)


predict.__doc__ = (
    """
    ---
    summary: Predict with the default model, now or queued
    description: >-
      With `Async-Mode: false` (or no header) the model runs at once and the answer holds its
      result. With `Async-Mode: true` the job is recorded and queued, and the answer holds a
      prediction id to poll at `GET /predict/{prediction_id}` (also in the `Location` header).
    tags: [predictions]
    parameters:"""
    + _PREDICT_SPEC_TAIL
)


async def predict_with_model(request: web.Request) -> web.Response:
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


async def predict_batch(request: web.Request) -> web.Response:
    app = request.app
    model = app[state.MODELS].get(request.match_info.get("name"))
    key = idempotency_key(request)
    deadline = cancel_after(request)
    check_json(request)
    settings = app[state.SETTINGS]
    raw_body = await read_body(request, settings.body_timeout_seconds)
    body = parse_bulk_body(raw_body, settings.max_bulk)
    inputs = body.inputs
    problems = []
    for index, value in enumerate(inputs):
        try:
            model.validate(value)
        except InvalidInput as exc:
            for item in exc.detail:
                problems.append({**item, "loc": ["inputs", index, *item["loc"][1:]]})
    if problems:
        raise InvalidInput("Some inputs do not fit the model; nothing was queued.", problems)
    if body.webhook:
        await check_url(body.webhook, settings)
    request_id = request[state.REQUEST_ID]
    events = ",".join(body.webhook_events)
    priority = body.priority or "normal"
    # An Idempotency-Key names the whole request: each job keeps it with its index (never
    # the name of a single submit's key) and the digest of the whole body, so a repeat
    # answers the same ids and another body is a 409.
    digest = body_digest(model.name, inputs, body.webhook, events, priority) if key else ""
    # All in one partition (one atomic script call): the key's, or any.
    partitions = app[state.PARTITIONS]
    partition = partitions.of(partitions.new_id(key)).index
    tenant = tenant_of(request)
    jobs = [
        NewJob(
            partitions.new_id(partition=partition),
            model.name,
            orjson.dumps(value),
            request_id,
            idempotency_name(tenant, key, index) if key else "",
            digest,
            body.webhook,
            events,
            priority=priority,
            cancel_after=deadline,
            tenant=tenant,
            traceparent=traced(request),
        )
        for index, value in enumerate(inputs)
    ]
    ids = await app[state.QUEUE].submit_all(jobs)
    return json_response({"prediction_ids": ids, "message": ACCEPTED_MESSAGE}, status=202)


_BULK_DESCRIPTION = """
    description: >-
      Every input is checked first; if any does not fit the model, the answer is 422 with
      each bad item's index in `detail[].loc` and nothing is queued. Otherwise all are
      queued in one Redis round trip and their prediction ids come back in input order.
      A `webhook` applies to every job (one delivery per job). An `Idempotency-Key`
      names the whole request: the same key and body answer the same ids and queue
      nothing new; the same key with another body is a 409.
    tags: [predictions]
    parameters:"""

_BULK_SPEC_TAIL = (
    """
      - $ref: "#/components/parameters/IdempotencyKey"
      - $ref: "#/components/parameters/CancelAfter"
      - $ref: "#/components/parameters/Traceparent"
    requestBody:
      required: true
      content:
        application/json:
          schema: {$ref: "#/components/schemas/BulkRequest"}
    responses:
      "202": {$ref: "#/components/responses/BulkAccepted"}"""
    + _BODY_ERRORS
)

predict_batch.__doc__ = (
    """
    ---
    summary: Queue many inputs for the default model in one request"""
    + _BULK_DESCRIPTION
    + _BULK_SPEC_TAIL
)


async def predict_batch_with_model(request: web.Request) -> web.Response:
    return await predict_batch(request)  # the model is named in the path


predict_batch_with_model.__doc__ = (
    """
    ---
    summary: Queue many inputs for a named model in one request"""
    + _BULK_DESCRIPTION
    + '''
      - $ref: "#/components/parameters/ModelName"'''
    + _BULK_SPEC_TAIL
    + """
      "404": {$ref: "#/components/responses/NotFound"}"""
)
