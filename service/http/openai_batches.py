"""OpenAI's Batch API over the queue: a JSONL file uploaded to the blob store
(`POST /v1/files`), a batch made of it (`POST /v1/batches`: each line a queued job of
priority low, so batches share replicas, quotas and fair share with everything else),
read (`GET /v1/batches/{id}`), canceled, and its output and error files read back
(`GET /v1/files/{id}/content`). The state is in Redis (`service.jobs.batches`)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ConfigDict, Field

from service.errors import (
    BadRequest,
    NotFound,
    QueueFull,
    RequestTimeout,
    ServiceError,
)
from service.http import state
from service.http.io import check_json, json_response, parse_json, read_body, tenant_of, traced
from service.http.openai import V1_ERRORS, Reply, embeddings_answer, finish_of, text_of
from service.http.openai_bodies import (
    ChatBody,
    CompletionBody,
    EmbeddingsBody,
    chat_input,
    checked,
    completion_input,
    served,
)
from service.http.uploads import parts, small_part
from service.job import JobRecord, NewJob, Status
from service.jobs.batches import Batches, content_key
from service.jobs.files import call_folder

#: Most lines in one batch file (OpenAI's own limit).
MOST_LINES = 50_000
ENDPOINTS = ("/v1/embeddings", "/v1/chat/completions", "/v1/completions")
_KINDS: dict[str, Any] = {
    "/v1/embeddings": EmbeddingsBody,
    "/v1/chat/completions": ChatBody,
    "/v1/completions": CompletionBody,
}
_TASKS = {"/v1/embeddings": "embeddings"}


def _file_object(file_id: str, details: dict[str, str]) -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "file",
        "bytes": int(details["bytes"]),
        "created_at": int(details["created_at"]),
        "filename": details["filename"],
        "purpose": details["purpose"],
        "status": "processed",
    }


async def _own_file(request: web.Request, file_id: str, param: str = "file_id") -> dict[str, str]:
    """The file's details, when the caller's tenant owns it (404 otherwise)."""
    details = await request.app[state.BATCHES].file(file_id)
    if details is None or details["tenant"] != tenant_of(request):
        raise NotFound(f"No such file: {file_id[:100]!r}.", param=param)
    return details


async def upload_file(request: web.Request) -> web.Response:
    """
    ---
    summary: Upload a batch's input file (OpenAI's files API)
    description: >-
      multipart/form-data with `purpose` (`batch`) and `file` (JSONL: one request a line,
      `{"custom_id", "method": "POST", "url", "body"}`), up to MAX_FILE_BYTES, streamed to
      the blob store. Kept BATCH_TTL_SECONDS; only its tenant sees it.
    tags: [openai]
    requestBody:
      required: true
      content:
        multipart/form-data:
          schema:
            type: object
            additionalProperties: false
            required: [purpose, file]
            properties:
              purpose: {type: string, enum: [batch]}
              file: {type: string, format: binary}
    responses:
      "200":
        description: The file.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/V1File"}
    """
    app = request.app
    settings = app[state.SETTINGS]
    if request.content_type != "multipart/form-data":
        raise BadRequest("Send the file as multipart/form-data, with 'purpose' and 'file'.")
    files, batches = app[state.FILES], app[state.BATCHES]
    idle = settings.body_timeout_seconds
    purpose: Any = ""
    filename = ""
    file_id = "file-" + secrets.token_hex(12)
    async with call_folder(files.settings.spool) as folder:
        taken = None
        budget = settings.max_body_bytes
        try:
            async for part in parts(request, idle):
                if part.name == "file":
                    if not part.filename or taken is not None:
                        raise BadRequest(
                            "The part 'file' must be one file, with a file name.", param="file"
                        )
                    filename = part.filename[:200]
                    taken = await files.intake.take_part(
                        "file", part, filename, "", folder, False, idle
                    )
                    continue
                if part.name != "purpose":
                    raise BadRequest(
                        f"Unknown part {str(part.name)[:40]!r}: send 'purpose' and 'file'.",
                        param=part.name,
                    )
                purpose, budget = await small_part(part, idle, budget, settings.max_body_bytes)
        except TimeoutError:
            raise RequestTimeout(f"The body stopped arriving for {idle:g} s.") from None
        except (ValueError, AssertionError, LookupError, HttpProcessingError) as exc:
            raise BadRequest(f"The multipart/form-data body is malformed: {exc}") from None
        if purpose != "batch":
            raise BadRequest("'purpose' must be 'batch' (the only purpose here).", param="purpose")
        if taken is None:
            raise BadRequest("The part 'file' (a file) is missing.", param="file")
        size = await batches.store.put(content_key(file_id), taken.path)
    details = {
        "tenant": tenant_of(request),
        "filename": filename,
        "bytes": size,
        "purpose": purpose,
        "created_at": int(time.time()),
    }
    await batches.keep_file(file_id, details)
    return json_response(_file_object(file_id, {k: str(v) for k, v in details.items()}))


async def get_file(request: web.Request) -> web.Response:
    """
    ---
    summary: A file's details
    tags: [openai]
    parameters:
      - {name: file_id, in: path, required: true, schema: {type: string}}
    responses:
      "200":
        description: The file.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/V1File"}
      "404": {$ref: "#/components/responses/V1Error"}
    """
    file_id = request.match_info["file_id"]
    return json_response(_file_object(file_id, await _own_file(request, file_id)))


async def file_content(request: web.Request) -> web.StreamResponse:
    """
    ---
    summary: A file's bytes (a batch's input, output or error file)
    tags: [openai]
    parameters:
      - {name: file_id, in: path, required: true, schema: {type: string}}
    responses:
      "200":
        description: The bytes (JSONL).
        content:
          application/octet-stream:
            schema: {type: string, format: binary}
      "404": {$ref: "#/components/responses/V1Error"}
    """
    file_id = request.match_info["file_id"]
    details = await _own_file(request, file_id)
    size = int(details["bytes"])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    async for chunk in request.app[state.BATCHES].store.read(content_key(file_id), 0, size):
        await response.write(chunk)
    await response.write_eof()
    return response


async def delete_file(request: web.Request) -> web.Response:
    """
    ---
    summary: Remove a file
    tags: [openai]
    parameters:
      - {name: file_id, in: path, required: true, schema: {type: string}}
    responses:
      "200":
        description: Removed.
        content:
          application/json:
            schema:
              type: object
              properties:
                id: {type: string}
                object: {type: string, enum: [file]}
                deleted: {type: boolean}
      "404": {$ref: "#/components/responses/V1Error"}
    """
    file_id = request.match_info["file_id"]
    await _own_file(request, file_id)
    await request.app[state.BATCHES].remove_file(file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


class BatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    input_file_id: str = Field(min_length=1, max_length=100)
    endpoint: Literal["/v1/embeddings", "/v1/chat/completions", "/v1/completions"]
    completion_window: Literal["24h"]
    # As OpenAI's: at most 16 pairs, keys up to 64 characters, values up to 512.
    metadata: (
        dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None
    ) = Field(None, max_length=16)


async def create_batch(request: web.Request) -> web.Response:
    """
    ---
    summary: Make a batch of an uploaded file (OpenAI's batch API)
    description: >-
      Every line of the input file (`purpose` batch) becomes a queued job of priority
      low, of the model its body names; a line that is not a request this server takes
      goes to the error file, the others run. All lines are queued, or none - 429 with
      `Retry-After` when they do not fit under the tenant's quota or MAX_QUEUE.
    tags: [openai]
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            additionalProperties: false
            required: [input_file_id, endpoint, completion_window]
            properties:
              input_file_id: {type: string, minLength: 1, maxLength: 100}
              endpoint:
                type: string
                enum: [/v1/embeddings, /v1/chat/completions, /v1/completions]
              completion_window: {type: string, enum: [24h]}
              metadata:
                type: object
                maxProperties: 16
                additionalProperties: {type: string}
    responses:
      "200":
        description: The batch, in progress.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/V1Batch"}
    """
    app = request.app
    settings = app[state.SETTINGS]
    check_json(request)
    body = checked(parse_json(await read_body(request, settings.body_timeout_seconds)), BatchBody)
    file = await _own_file(request, body.input_file_id, "input_file_id")
    if file["purpose"] != "batch":
        raise BadRequest("The input file's purpose must be 'batch'.", param="input_file_id")
    batch_id = "batch_" + secrets.token_hex(12)
    entries, jobs = await _read_lines(request, body.input_file_id, int(file["bytes"]), body)
    if not entries:
        raise BadRequest("The input file holds no requests.", param="input_file_id")
    await _queue(request, jobs)
    now = int(time.time())
    details = {
        "tenant": tenant_of(request),
        "endpoint": body.endpoint,
        "input_file_id": body.input_file_id,
        "completion_window": body.completion_window,
        "status": "in_progress",
        "created_at": now,
        "in_progress_at": now,
        "metadata": orjson.dumps(body.metadata).decode(),
    }
    batches = app[state.BATCHES]
    await batches.create(batch_id, details, [orjson.dumps(e) for e in entries])
    return json_response(await _batch_object(request, batch_id, move=True))


async def _lines(batches: Batches, file_id: str, size: int, most: int) -> AsyncIterator[bytes]:
    """The lines of a stored file, one at a time; a line longer than ``most`` bytes comes as
    a marker (its first bytes and no end) and the rest of it is skipped."""
    pending = bytearray()
    skipping = False
    async for chunk in batches.store.read(content_key(file_id), 0, size):
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if not skipping:
                pending += chunk[start:end]
                yield bytes(pending) if len(pending) <= most else b"\0" + bytes(pending[:40])
            pending.clear()
            skipping = False
            start = end + 1
        if not skipping:
            pending += chunk[start:]
            if len(pending) > most:
                yield b"\0" + bytes(pending[:40])  # too long: said once, the rest skipped
                pending.clear()
                skipping = True
    if pending and not skipping:
        yield bytes(pending)


async def _read_lines(
    request: web.Request, file_id: str, size: int, body: BatchBody
) -> tuple[list[dict[str, Any]], list[NewJob]]:
    """What each line of the input becomes: its jobs (entry "p": their ids), or why it is
    refused (entry "e", "k"); and the jobs to queue."""
    app = request.app
    settings = app[state.SETTINGS]
    partitions = app[state.PARTITIONS]
    tenant, trace, request_id = tenant_of(request), traced(request), request[state.REQUEST_ID]
    entries: list[dict[str, Any]] = []
    jobs: list[NewJob] = []
    seen: set[str] = set()
    batches = app[state.BATCHES]
    most, why = _most_jobs(app, tenant)
    number = 0  # of the line in the file, from 1 (said in its error: it may have no custom_id)
    async for raw in _lines(batches, file_id, size, settings.max_body_bytes):
        number += 1
        if not raw.strip():
            continue
        if len(entries) % 64 == 63:
            await asyncio.sleep(0)  # a chunk of the file holds many lines: let others run
        if len(entries) == MOST_LINES:
            raise BadRequest(
                f"A batch file may have at most {MOST_LINES} lines.", param="input_file_id"
            )
        custom_id: Any = ""
        try:
            if raw.startswith(b"\0"):
                raise BadRequest(
                    f"The line is longer than MAX_BODY_BYTES ({settings.max_body_bytes})."
                )
            line = parse_json(raw)
            if not isinstance(line, dict):
                raise BadRequest("A line must be a JSON object.")
            custom_id = line.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 512:
                custom_id = ""
                raise BadRequest("'custom_id' must be a string of 1 to 512 characters.")
            if custom_id in seen:
                raise BadRequest(f"custom_id {custom_id!r} is used by an earlier line.")
            seen.add(custom_id)
            if line.get("method") != "POST" or line.get("url") != body.endpoint:
                raise BadRequest(
                    f"Each line must be a POST to the batch's endpoint, {body.endpoint}."
                )
            entry, values = _request_of(request, body.endpoint, line.get("body"))
        except ServiceError as exc:
            code = exc.code or "invalid_request"
            entries.append({"c": custom_id, "e": f"Line {number}: {exc.message}", "k": code})
            continue
        if len(jobs) + len(values) > most:
            raise BadRequest(
                f"The batch has more requests than {why} ({most}): split it.",
                param="input_file_id",
            )
        ids = []
        for value in values:
            prediction_id = partitions.new_id()
            ids.append(prediction_id)
            jobs.append(
                NewJob(
                    prediction_id,
                    entry["m"],
                    orjson.dumps(value),
                    request_id,
                    priority="low",
                    tenant=tenant,
                    traceparent=trace,
                    untimed_wait=True,
                )
            )
            if len(jobs) % 256 == 0:
                await asyncio.sleep(0)  # a line may hold many texts: let others run
        entries.append({"c": custom_id, "p": ids, **entry})
    return entries, jobs


def _most_jobs(app: web.Application, tenant: str) -> tuple[int, str]:
    """The most jobs a batch may have, and what sets it: 50,000 (OpenAI's own limit), or
    less when MAX_QUEUE or the tenant's quota would never let that many be queued."""
    limits = [(MOST_LINES, "a batch may have")]
    if app[state.SETTINGS].max_queue:
        limits.append((app[state.SETTINGS].max_queue, "MAX_QUEUE"))
    quota = app[state.QUEUE].quotas.get(tenant)
    if quota:
        limits.append((quota, f"tenant {tenant!r} may have queued"))
    return min(limits)


def _request_of(request: web.Request, endpoint: str, data: Any) -> tuple[dict[str, Any], list[Any]]:
    """One line's request: its entry (model "m", endpoint "u", and what its answer needs)
    and the model inputs of its jobs (one per text of an embeddings request)."""
    if isinstance(data, dict) and data.get("stream"):
        raise BadRequest("A batch's requests cannot stream.", param="stream")
    body = checked(data, _KINDS[endpoint])
    registry = request.app[state.MODELS]
    model = served(registry, body.model, _TASKS.get(endpoint, "generation"), endpoint)
    entry: dict[str, Any] = {"m": model.name, "u": endpoint}
    if isinstance(body, EmbeddingsBody):
        texts = [body.input] if isinstance(body.input, str) else body.input
        for text in texts:
            model.validate(text)
        entry["f"] = body.encoding_format
        return entry, list(texts)
    raw, _ = (
        chat_input(model, body) if isinstance(body, ChatBody) else completion_input(model, body)
    )
    entry["l"] = body.limit()
    return entry, [raw]


async def _queue(request: web.Request, jobs: list[NewJob]) -> None:
    """Queues every job, MAX_BULK at a time, each part in one partition; or none: a part
    that does not fit cancels the parts queued before it (429)."""
    app = request.app
    queue, results = app[state.QUEUE], app[state.RESULTS]
    partitions = app[state.PARTITIONS]
    most = app[state.SETTINGS].max_bulk
    by_partition: dict[int, list[NewJob]] = {}
    for job in jobs:
        by_partition.setdefault(partitions.of(job.prediction_id).index, []).append(job)
    queued: list[str] = []
    try:
        for part in by_partition.values():
            for start in range(0, len(part), most):
                chunk = part[start : start + most]
                await queue.submit_all(chunk)
                queued.extend(job.prediction_id for job in chunk)
    except QueueFull as exc:
        now, tenant = time.time(), tenant_of(request)
        await asyncio.gather(*(results.cancel(p, now, tenant) for p in queued))
        raise QueueFull(f"The batch's {len(jobs)} requests do not fit: {exc.message}") from None


async def _own_batch(request: web.Request, batch_id: str) -> dict[str, str]:
    details = await request.app[state.BATCHES].get(batch_id)
    if details is None or details["tenant"] != tenant_of(request):
        raise NotFound(f"No such batch: {batch_id!r}.", param="batch_id")
    return details


async def _batch_object(request: web.Request, batch_id: str, move: bool) -> dict[str, Any]:
    """The batch as OpenAI's clients read it (moved on first, with ``move``)."""
    app = request.app
    batches = app[state.BATCHES]
    if move:  # its details as the move left them: not read again
        details = await batches.move(batch_id, reader(app), shape_of(app))
    else:
        details = await batches.get(batch_id)
    if details is None:
        raise NotFound(f"No such batch: {batch_id!r}.", param="batch_id")
    done, failed = await batches.counts(batch_id, details)

    def at(name: str) -> int | None:
        value = details.get(name)
        return int(value) if value else None

    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": details["endpoint"],
        "errors": None,
        "input_file_id": details["input_file_id"],
        "completion_window": details["completion_window"],
        "status": details["status"],
        "output_file_id": details.get("output_file_id"),
        "error_file_id": details.get("error_file_id"),
        "created_at": int(details["created_at"]),
        "in_progress_at": at("in_progress_at"),
        "expires_at": int(details["created_at"]) + 24 * 3600,
        "finalizing_at": None,
        "completed_at": at("completed_at"),
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": at("cancelling_at"),
        "cancelled_at": at("cancelled_at"),
        "request_counts": {"total": int(details["total"]), "completed": done, "failed": failed},
        "metadata": orjson.loads(details.get("metadata") or "null"),
    }


async def get_batch(request: web.Request) -> web.Response:
    """
    ---
    summary: A batch, its status and request counts
    tags: [openai]
    parameters:
      - {name: batch_id, in: path, required: true, schema: {type: string}}
    responses:
      "200":
        description: The batch.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/V1Batch"}
      "404": {$ref: "#/components/responses/V1Error"}
    """
    batch_id = request.match_info["batch_id"]
    await _own_batch(request, batch_id)
    return json_response(await _batch_object(request, batch_id, move=True))


async def cancel_batch(request: web.Request) -> web.Response:
    """
    ---
    summary: Cancel a batch
    description: >-
      Its jobs still queued are canceled (those running end as they will); it is
      `cancelling` until they have, then `cancelled`, with the output and error files of
      what ended. A batch that ended already is answered as it is.
    tags: [openai]
    parameters:
      - {name: batch_id, in: path, required: true, schema: {type: string}}
    responses:
      "200":
        description: The batch.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/V1Batch"}
      "404": {$ref: "#/components/responses/V1Error"}
    """
    app = request.app
    batch_id = request.match_info["batch_id"]
    details = await _own_batch(request, batch_id)
    if details["status"] == "in_progress":
        batches, results = app[state.BATCHES], app[state.RESULTS]
        await batches.set_status(batch_id, "cancelling")
        tenant = tenant_of(request)

        async def cancel(prediction_id: str, owner: str) -> Any:
            return await results.cancel(prediction_id, time.time(), owner)

        await batches.cancel_jobs(batch_id, tenant, cancel)
    return json_response(await _batch_object(request, batch_id, move=True))


def reader(app: web.Application) -> Any:
    results = app[state.RESULTS]

    async def read(ids: Sequence[str]) -> Sequence[JobRecord | None]:
        return await asyncio.gather(*(results.get(p) for p in ids))

    return read


def shape_of(app: web.Application) -> Any:
    """How a line that ended is answered in the output or error file."""
    registry = app[state.MODELS]

    def shape(entry: dict[str, Any], records: Sequence[JobRecord | None]) -> tuple[bool, bytes]:
        # The same line answered twice (two replicas, or a step done again): the same id.
        line_id = f"batch_req_{str(entry.get('b', '')).removeprefix('batch_')}_{entry.get('n', 0)}"
        custom_id = entry.get("c", "")

        def refused(code: str, message: str, status: int | None = None) -> tuple[bool, bytes]:
            error = {"code": code, "message": message}
            if status is None:
                line = {"id": line_id, "custom_id": custom_id, "response": None, "error": error}
            else:
                body = {
                    "error": {
                        "message": message,
                        "type": "server_error",
                        "param": None,
                        "code": code,
                    }
                }
                response = {"status_code": status, "request_id": line_id, "body": body}
                line = {"id": line_id, "custom_id": custom_id, "response": response, "error": None}
            return False, orjson.dumps(line)

        if "e" in entry:
            return refused(entry.get("k", "invalid_request"), entry["e"])
        if any(r is None for r in records):
            return refused("expired", "The request's job record expired before the batch ended.")
        ended = [r for r in records if r is not None]
        failed = next((r for r in ended if r.status is not Status.DONE), None)
        if failed is not None:
            what = failed.error or f"The request's job ended {failed.status.value}."
            code = "batch_cancelled" if failed.status is Status.CANCELED else failed.status.value
            return refused(code, what, 500)
        request_id = ended[0].prediction_id if ended else None
        try:
            if entry["u"] == "/v1/embeddings":
                model = registry.get(entry["m"])
                answer = embeddings_answer(
                    model, [r.result for r in ended], entry.get("f", "float")
                )
            else:
                made = ended[0].result
                pieces = made if isinstance(made, list) else [made]
                reply = Reply(entry["m"], chat=entry["u"] == "/v1/chat/completions")
                text = "".join(text_of(p) for p in pieces)
                answer = reply.whole(text, finish_of(len(pieces), entry.get("l")))
        except ServiceError as exc:
            return refused("model_error", exc.message, 500)
        response = {"status_code": 200, "request_id": request_id or line_id, "body": answer}
        return True, orjson.dumps(
            {"id": line_id, "custom_id": custom_id, "response": response, "error": None}
        )

    return shape


for _handler in (
    upload_file,
    get_file,
    file_content,
    delete_file,
    create_batch,
    get_batch,
    cancel_batch,
):
    _doc = (_handler.__doc__ or "").rstrip()
    _handler.__doc__ = (
        _doc.replace('      "404": {$ref: "#/components/responses/V1Error"}', "") + V1_ERRORS
    )
