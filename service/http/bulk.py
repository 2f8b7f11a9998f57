"""Bulk submits: many inputs queued in one request (all or none), for the default model or
a named one."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from service.errors import InvalidInput
from service.http import state
from service.http.io import (
    body_digest,
    cancel_after,
    check_json,
    idempotency_key,
    json_response,
    parse_bulk_body,
    read_body,
    tenant_of,
    traced,
)
from service.http.predict import BODY_ERRORS
from service.http.schemas import ACCEPTED_MESSAGE
from service.job import NewJob
from service.jobs.webhooks import check_url
from service.models.base import Model
from service.redis.keys import idempotency_name


def check_inputs(model: Model, inputs: list[Any]) -> None:
    """422 unless every input fits the model (``detail`` naming each bad one by index),
    or when the model takes files (they are sent one request each)."""
    if model.file_fields:
        raise InvalidInput(
            f"Model {model.name!r} takes files: send each input to POST /predict (multipart "
            "or JSON with URLs), not in a bulk submit."
        )
    problems = []
    for index, value in enumerate(inputs):
        try:
            model.validate(value)
        except InvalidInput as exc:
            for item in exc.detail:
                problems.append({**item, "loc": ["inputs", index, *item["loc"][1:]]})
    if problems:
        raise InvalidInput("Some inputs do not fit the model; nothing was queued.", problems)


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
    check_inputs(model, inputs)
    if body.webhook:
        await check_url(body.webhook, app[state.WEBHOOK_POLICY])
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
    + BODY_ERRORS
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
