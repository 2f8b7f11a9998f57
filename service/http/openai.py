"""OpenAI-compatible routes over the same models, keys, tenants and limits: /v1/models,
/v1/embeddings (models of task "embeddings", through their batcher like any request),
/v1/chat/completions and /v1/completions (models of task "generation": one answer, or
its text streamed as the model yields it, in OpenAI's chunk format). Errors on these
routes take OpenAI's shape (`service.http.answers.openai_error`)."""

from __future__ import annotations

import base64
import secrets
import struct
import time
from typing import Any

import orjson
from aiohttp import web

from service.errors import (
    BadRequest,
    PredictionFailed,
    PredictionTimeout,
    ServiceError,
)
from service.execution.streams import Chunks
from service.http import sse, state
from service.http.io import check_json, json_response, read_body, tenant_of
from service.http.openai_bodies import (
    ChatBody,
    CompletionBody,
    EmbeddingsBody,
    GenerationBody,
    chat_input,
    completion_input,
    no_such_model,
    parse,
    served,
    texts_of,
)
from service.job import Outcome
from service.jobs import deadlines
from service.jobs.runner import drain
from service.models import Model

#: When this replica started: the `created` of its models (they are loaded at start).
_STARTED = int(time.time())
_OWNER = "model-service"


def _model_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _STARTED, "owned_by": _OWNER}


async def list_v1_models(request: web.Request) -> web.Response:
    """
    ---
    summary: The models served here, in OpenAI's list shape
    description: >-
      Every model this service answers for; `GET /models/{name}` tells what each does
      (its `task`: which of the /v1 routes serve it).
    tags: [openai]
    responses:
      "200":
        description: The models.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/V1ModelList"}
    """
    names = sorted(request.app[state.MODELS].models)
    return json_response({"object": "list", "data": [_model_entry(n) for n in names]})


async def get_v1_model(request: web.Request) -> web.Response:
    """
    ---
    summary: One model, in OpenAI's shape
    tags: [openai]
    parameters:
      - {name: model, in: path, required: true, schema: {type: string}}
    responses:
      "200":
        description: The model.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/V1Model"}
      "404": {$ref: "#/components/responses/V1Error"}
    """
    name = request.match_info["model"]
    if name not in request.app[state.MODELS].models:
        raise no_such_model(name)
    return json_response(_model_entry(name))


async def embeddings(request: web.Request) -> web.Response:
    """
    ---
    summary: Embeddings of one text or many (OpenAI's embeddings API)
    description: >-
      For a model of task `embeddings`. Each text is one call of the model, batched with
      every other request to it. `encoding_format` `base64` answers each vector as
      little-endian float32 bytes in base64. `usage` is given when the model reports the
      tokens it read.
    tags: [openai]
    requestBody:
      required: true
      content:
        application/json:
          schema: {$ref: "#/components/schemas/V1EmbeddingsRequest"}
    responses:
      "200":
        description: One vector per text, in order.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/V1Embeddings"}
    """
    app = request.app
    settings = app[state.SETTINGS]
    check_json(request)
    body = parse(await read_body(request, settings.body_timeout_seconds), EmbeddingsBody)
    model = served(app[state.MODELS], body.model, "embeddings", "/v1/embeddings")
    values = texts_of(model, body)
    wait = deadlines.sync_wait(settings.job_timeout_seconds, 0)
    gate = app[state.SYNC_GATE]
    gate.enter(settings.max_sync_in_flight)
    batcher = app[state.BATCHERS][model.name]
    try:
        futures = [batcher.run_one(value, wait.seconds) for value in values]
        try:
            outcomes = [await future for future in futures]
        except TimeoutError:
            raise PredictionTimeout(
                f"The embeddings took longer than {wait.seconds:g} s."
            ) from None
    finally:
        gate.in_flight -= 1
    failed = next((o for o in outcomes if not o.ok), None)
    app[state.METRICS].count_prediction(
        model.name, "sync", failed is None, tenant_of(request), error=failed.error if failed else ""
    )
    if failed is not None:
        raise PredictionFailed(failed.error)
    outputs = [orjson.loads(outcome.payload) for outcome in outcomes]
    return json_response(embeddings_answer(model, outputs, body.encoding_format))


def embeddings_answer(model: Model, outputs: list[Any], encoding: str) -> dict[str, Any]:
    """The answer of an embeddings request: the vector of each output, in order, as
    numbers or (``encoding`` "base64") little-endian float32 bytes in base64; the tokens
    read when every output says."""
    data: list[dict[str, Any]] = []
    tokens: int | None = 0
    for at, output in enumerate(outputs):
        vector, used = _vector(model, output)
        tokens = tokens + used if tokens is not None and used is not None else None
        if encoding == "base64":
            packed: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        else:
            packed = vector
        data.append({"object": "embedding", "index": at, "embedding": packed})
    answer: dict[str, Any] = {"object": "list", "data": data, "model": model.name}
    if tokens is not None:
        answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return answer


def _vector(model: Model, output: Any) -> tuple[list[float], int | None]:
    """An embedding model's output: its vector (a list of numbers, or a dict's "embedding")
    and the tokens it read (a dict's "tokens"; None when it does not say)."""
    used = None
    if isinstance(output, dict):
        used = output.get("tokens")
        used = used if type(used) is int and used >= 0 else None
        output = output.get("embedding")
    if not isinstance(output, list) or not all(type(x) is float or type(x) is int for x in output):
        raise PredictionFailed(
            f"The model '{model.name}' answered no vector: an embeddings model returns a "
            'list of numbers, or {"embedding": [...]}.'
        )
    return output, used


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """
    ---
    summary: A chat completion, whole or streamed (OpenAI's chat completions API)
    description: >-
      For a model of task `generation`. Its input is made of the messages (as they are,
      for a model that takes `messages`; else as a prompt, a line each, `role: text`) and
      `max_tokens` (or `max_completion_tokens`), `stop`, `temperature` and `seed` where
      the model takes them. With `stream: true` the answer is server-sent events, each a
      `chat.completion.chunk`, ending with `data: [DONE]`; a client that goes away stops
      the model. A parameter this server does not support is a 400 naming it.
    tags: [openai]
    requestBody:
      required: true
      content:
        application/json:
          schema: {$ref: "#/components/schemas/V1ChatRequest"}
    responses:
      "200":
        description: The completion; with `stream` true, its chunks as server-sent events.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/V1ChatCompletion"}
          text/event-stream:
            schema: {type: string}
    """
    app = request.app
    check_json(request)
    body = parse(await read_body(request, app[state.SETTINGS].body_timeout_seconds), ChatBody)
    model = served(app[state.MODELS], body.model, "generation", "/v1/chat/completions")
    _, value = chat_input(model, body)
    return await _generate(request, model, body, value, Reply(model.name, chat=True))


async def completions(request: web.Request) -> web.StreamResponse:
    """
    ---
    summary: A text completion, whole or streamed (OpenAI's legacy completions API)
    description: >-
      For a model of task `generation`: the prompt as it is, with the same parameters as
      chat completions; streamed chunks are `text_completion` objects.
    tags: [openai]
    requestBody:
      required: true
      content:
        application/json:
          schema: {$ref: "#/components/schemas/V1CompletionRequest"}
    responses:
      "200":
        description: The completion; with `stream` true, its chunks as server-sent events.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/V1Completion"}
          text/event-stream:
            schema: {type: string}
    """
    app = request.app
    settings = app[state.SETTINGS]
    check_json(request)
    body = parse(await read_body(request, settings.body_timeout_seconds), CompletionBody)
    model = served(app[state.MODELS], body.model, "generation", "/v1/completions")
    _, value = completion_input(model, body)
    return await _generate(request, model, body, value, Reply(model.name, chat=False))


class Reply:
    """One completion's answers: whole, or as chunks, in the shape of its route."""

    def __init__(self, model: str, chat: bool) -> None:
        self.model, self.chat = model, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, text: str, finish: str) -> dict[str, Any]:
        if self.chat:
            message = {"role": "assistant", "content": text, "refusal": None}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            return {**self._head("chat.completion"), "choices": [choice]}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice]}

    def piece(self, text: str | None, finish: str | None = None) -> bytes:
        """One event: a piece of text (None: the chat's opening, its role), or the end."""
        if self.chat:
            delta: dict[str, Any] = {}
            if text is None:
                delta = {"role": "assistant", "content": ""}
            elif finish is None:
                delta = {"content": text}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            body = {**self._head("chat.completion.chunk"), "choices": [choice]}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            body = {**self._head("text_completion"), "choices": [choice]}
        return b"data: " + orjson.dumps(body) + b"\n\n"


def text_of(chunk: Any) -> str:
    """A chunk of a generation model as text (a string as it is; anything else as JSON)."""
    if isinstance(chunk, str):
        return chunk
    if isinstance(chunk, list) and all(isinstance(c, str) for c in chunk):
        return "".join(chunk)  # a model that does not stream: its whole text, in pieces
    return orjson.dumps(chunk).decode()


def finish_of(made: int, limit: int | None) -> str:
    """Why the text ended: "length" when it reached max_tokens (a chunk a token), else "stop"."""
    return "length" if limit is not None and made >= limit else "stop"


async def _generate(
    request: web.Request, model: Model, body: GenerationBody, value: Any, reply: Reply
) -> web.StreamResponse:
    app = request.app
    settings = app[state.SETTINGS]
    if body.stream_options is not None and body.stream_options.include_usage:
        raise BadRequest(
            f"The model '{model.name}' does not report token counts: "
            "stream_options.include_usage is not supported for it.",
            param="stream_options",
        )
    wait = deadlines.sync_wait(settings.job_timeout_seconds, 0)
    gate = app[state.SYNC_GATE]
    gate.enter(settings.max_sync_in_flight)
    try:
        batcher = app[state.BATCHERS][model.name]
        chunks = batcher.stream(value) if model.streams else await sse.whole(batcher, value, wait)
        if body.stream:
            return await _stream(request, model, body, chunks, wait, reply)
        most = settings.max_stream_chunks
        outcome = await drain(chunks, wait, settings.job_timeout_seconds, most)
    finally:
        gate.in_flight -= 1
    _count(request, model, outcome)
    if not outcome.ok:
        raise PredictionFailed(outcome.error)
    made = orjson.loads(outcome.payload)
    return json_response(
        reply.whole("".join(text_of(c) for c in made), finish_of(len(made), body.limit()))
    )


async def _stream(
    request: web.Request,
    model: Model,
    body: GenerationBody,
    chunks: Chunks,
    wait: deadlines.Wait,
    reply: Reply,
) -> web.StreamResponse:
    """The text as it is made: an event a chunk, the end with its finish reason, then
    ``data: [DONE]``; an error mid-way as an event with OpenAI's error shape (what was sent
    stays sent), and no [DONE]. A client that goes away stops the model."""
    settings = request.app[state.SETTINGS]
    response = await sse.open_events(request)
    if reply.chat:
        await response.write(reply.piece(None))

    made = 0

    async def send(number: int, chunk: bytes) -> bool:
        nonlocal made
        made = number
        await response.write(reply.piece(text_of(orjson.loads(chunk))))
        return True

    most = settings.max_stream_chunks
    try:
        outcome = await drain(chunks, wait, settings.job_timeout_seconds, most, send)
    except ConnectionResetError:  # the client went away: the model was stopped
        _count(request, model, deadlines.CANCELED)
        return response
    except ServiceError as exc:  # the replica stops (ShuttingDown): said in the stream
        outcome = Outcome(ok=False, error=exc.message)
    _count(request, model, outcome)
    if outcome.ok:
        last = reply.piece("", finish_of(made, body.limit())) + b"data: [DONE]\n\n"
    else:
        error = {"message": outcome.error, "type": "server_error", "param": None, "code": None}
        last = b"data: " + orjson.dumps({"error": error}) + b"\n\n"
    try:
        await response.write(last)
        await response.write_eof()
    except ConnectionResetError:  # gone after the last chunk: the outcome stands
        pass
    return response


def _count(request: web.Request, model: Model, outcome: Outcome) -> None:
    ended = deadlines.ended(outcome)
    request.app[state.METRICS].count_prediction(
        model.name, "sync", outcome.ok or ended.value, tenant_of(request), error=outcome.error
    )


# What the routes that run a model may answer besides 200, in OpenAI's error shape.
V1_ERRORS = """
      "400": {$ref: "#/components/responses/V1Error"}
      "401": {$ref: "#/components/responses/V1Error"}
      "404": {$ref: "#/components/responses/V1Error"}
      "408": {$ref: "#/components/responses/V1Error"}
      "409": {$ref: "#/components/responses/V1Error"}
      "413": {$ref: "#/components/responses/V1Error"}
      "415": {$ref: "#/components/responses/V1Error"}
      "429": {$ref: "#/components/responses/V1Error"}
      "500": {$ref: "#/components/responses/V1Error"}
      "503": {$ref: "#/components/responses/V1Error"}
      "504": {$ref: "#/components/responses/V1Error"}
"""

for _handler in (embeddings, chat_completions, completions):
    _handler.__doc__ = (_handler.__doc__ or "").rstrip() + V1_ERRORS
