"""Thin handlers: parse the request, call the model or the queue, shape the answer."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from . import state
from .errors import BadRequest, InvalidInput, NotFound, PredictionFailed, UnsupportedMediaType
from .schemas import ACCEPTED_MESSAGE, NOT_FOUND_MESSAGE, JobRecord, PredictRequest, Status


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def _async_mode(request: web.Request) -> bool:
    raw = request.headers.get("Async-Mode")
    if raw is None:
        return False
    value = raw.strip().lower()
    if value not in ("true", "false"):
        raise BadRequest(f"Async-Mode must be 'true' or 'false', not {raw!r}.")
    return value == "true"


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


async def _read_body(request: web.Request) -> PredictRequest:
    if not _is_json(request.content_type):
        raise UnsupportedMediaType("Send the body as application/json.")
    raw = await request.read()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}.") from None
    try:
        return PredictRequest.model_validate(data)
    except ValidationError as exc:
        detail = [
            {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise InvalidInput(
            "The body must be a JSON object with one field, 'input'.", detail
        ) from None


async def predict(request: web.Request) -> web.Response:
    """
    ---
    summary: Predict now, or queue the prediction
    description: >-
      With `Async-Mode: false` (or no header) the model runs at once and the answer holds its
      result. With `Async-Mode: true` the job is recorded and queued, and the answer holds a
      prediction id to poll at `GET /predict/{prediction_id}` (also in the `Location` header).
    tags: [predictions]
    parameters:
      - $ref: "#/components/parameters/AsyncMode"
    requestBody:
      required: true
      content:
        application/json:
          schema: {$ref: "#/components/schemas/PredictRequest"}
    responses:
      "200":
        description: The prediction (synchronous mode).
        content:
          application/json:
            schema: {$ref: "#/components/schemas/SyncPrediction"}
            example:
              input: "I love this product, it works great!"
              result:
                label: positive
                scores: {neg: 0.0, neu: 0.4, pos: 0.6, compound: 0.86}
      "202":
        description: Queued (asynchronous mode).
        headers:
          Location:
            description: Where to poll for the result.
            schema: {type: string, example: /predict/0b5c2a53-6f0e-4d8e-9d59-3c1c7a1e3f10}
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Accepted"}
      "400": {$ref: "#/components/responses/BadRequest"}
      "413": {$ref: "#/components/responses/PayloadTooLarge"}
      "415": {$ref: "#/components/responses/UnsupportedMediaType"}
      "422": {$ref: "#/components/responses/InvalidInput"}
      "500": {$ref: "#/components/responses/ServerError"}
      "503": {$ref: "#/components/responses/Unavailable"}
    """
    queued = _async_mode(request)
    body = await _read_body(request)
    model = request.app[state.MODEL]
    value = model.validate(body.input)
    if queued:
        record = JobRecord(
            prediction_id=str(uuid.uuid4()),
            status=Status.QUEUED,
            model=model.name,
            input=body.input,
            created_at=time.time(),
        )
        await request.app[state.QUEUE].submit(record)
        return json_response(
            {"prediction_id": record.prediction_id, "message": ACCEPTED_MESSAGE},
            status=202,
            headers={"Location": f"/predict/{record.prediction_id}"},
        )
    outcome = await request.app[state.EXECUTOR].run(model.run_one, value)
    if not outcome.ok:
        raise PredictionFailed(outcome.error)
    return json_response({"input": body.input, "result": orjson.Fragment(outcome.payload)})


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
    parameters:
      - $ref: "#/components/parameters/PredictionId"
    responses:
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
    record = await request.app[state.RESULTS].get(prediction_id)
    if record is None:
        raise NotFound(NOT_FOUND_MESSAGE)
    return json_response(record.to_view())
