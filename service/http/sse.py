"""Server-sent events: a queued job followed (its status changes and, for a model that
streams, each chunk as an `output` event), resumable from any replica with
`Last-Event-ID`; and a sync request answered as a stream (`Accept: text/event-stream`),
each chunk sent as the model yields it."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from service.errors import BadRequest, ServiceError
from service.execution.batching import Batcher
from service.execution.streams import Chunks, End
from service.http import state
from service.http.io import client_gone, tenant_of
from service.job import JobRecord, Outcome, Status, prediction_view
from service.jobs import deadlines
from service.jobs.runner import drain

KEEPALIVE_SECONDS = 15.0
_ID = "0123456789"


def wants_events(request: web.Request) -> bool:
    """Whether the client asked for a stream of events (Accept: text/event-stream)."""
    return "text/event-stream" in request.headers.get("Accept", "")


def last_event_id(request: web.Request) -> int:
    """The number of the last chunk the client saw (Last-Event-ID, or ?last_event_id= for
    a browser's EventSource): 0 for none; 400 for anything but one of ours."""
    raw = request.headers.get("Last-Event-ID", request.query.get("last_event_id", ""))
    value = raw.strip()
    if not value:
        return 0
    if len(value) > 9 or value.strip(_ID):
        raise BadRequest(
            f"Last-Event-ID {raw[:40]!r} is not the id of an event of this stream: send "
            "the id of the last output event received (a number), or none."
        )
    return int(value)


async def open_events(request: web.Request) -> web.StreamResponse:
    """A prepared text/event-stream answer."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # a proxy in front passes each event on at once
            "X-Request-ID": request[state.REQUEST_ID],
        }
    )
    await response.prepare(request)
    return response


def event(kind: bytes, data: bytes, number: int = 0) -> bytes:
    """One event; an output's carries its chunk number as its id."""
    head = b"id: %d\n" % number if number else b""
    return head + b"event: " + kind + b"\ndata: " + data + b"\n\n"


async def follow(
    request: web.Request, response: web.StreamResponse, prediction_id: str, after: int
) -> None:
    """Writes the job's status now and at each change, and its chunks numbered after
    ``after`` as they come, until it is final (then what is left, and the final status).
    Nothing twice, nothing missed: the follower is registered (on this replica and, for
    new chunks, in Redis) before each read of the record and of the chunks."""
    waiters, outputs = request.app[state.WAITERS], request.app[state.OUTPUTS]
    with waiters.following(prediction_id), outputs.watching(prediction_id):
        await _follow(request, response, prediction_id, after)


async def _follow(
    request: web.Request, response: web.StreamResponse, prediction_id: str, after: int
) -> None:
    app = request.app
    waiters, outputs, results = app[state.WAITERS], app[state.OUTPUTS], app[state.RESULTS]
    sent: Status | None = None
    woken = False  # a later round: one that writes nothing writes a keep-alive comment
    current: JobRecord | None = None
    moves, read_at = -1, 0.0
    while True:
        future = waiters.register(prediction_id, changes=True, outputs=True)
        try:
            # The record is read again when its status may have changed (and at each
            # keep-alive), not for each new chunk.
            now = time.monotonic()
            if waiters.moves(prediction_id) != moves or now - read_at >= KEEPALIVE_SECONDS:
                moves, read_at = waiters.moves(prediction_id), now
                # A read that watches: from it on, this replica is told of the job's
                # starts, end and chunks (again after a failover lost the field).
                current = await results.get(prediction_id, watch=True)
            if current is None:  # expired meanwhile
                return
            wrote = after
            if not current.status.final and current.status is not sent:
                await response.write(_status(current))
                sent, wrote = current.status, -1
            while chunks := await outputs.read(prediction_id, after):
                for number, chunk in chunks:
                    await response.write(event(b"output", chunk, number))
                    after = number
            if current.status.final:
                await response.write(_status(current))
                return
            if waiters.released:  # the replica stops: the client reconnects elsewhere
                return
        except BaseException:
            waiters.unregister(prediction_id, future)
            raise
        if woken and wrote == after:
            # A comment line, between events: no blank line after it, which some clients
            # take for an event with no data.
            await response.write(b": still " + current.status.value.encode() + b"\n")
        woken = True
        await waiters.changed(
            prediction_id, future, KEEPALIVE_SECONDS, lambda: client_gone(request)
        )
        if client_gone(request):
            raise ConnectionResetError("the client closed the stream")
        handed = future.result()
        if handed is not None and handed.status.final:  # written here: no need to read it
            current, moves = handed, waiters.moves(prediction_id)


def _status(record: JobRecord) -> bytes:
    return event(b"status", orjson.dumps(prediction_view(record)))


async def whole(batcher: Batcher, value: Any, wait: deadlines.Wait) -> Chunks:
    """The output of a model that does not stream, as a stream of one chunk."""
    chunks = Chunks()
    future = batcher.run_one(value, wait.seconds)
    try:
        outcome = await future
    except TimeoutError:
        if wait.cancels:
            error = deadlines.sync_cut(batcher.started(future)).error
        else:
            error = f"timed out: longer than {wait.seconds:g} s"
        await chunks.put(End(error))
        return chunks
    if outcome.ok:
        await chunks.put(outcome.payload)
    await chunks.put(End("" if outcome.ok else outcome.error))
    return chunks


async def answer_now(
    request: web.Request,
    model: str,
    raw: Any,
    chunks: Chunks,
    wait: deadlines.Wait,
) -> tuple[web.StreamResponse, Outcome]:
    """A sync request's chunks as events while the model yields them, then `done` with the
    final record (its result the list of chunks), or `error` (what was sent stays sent).
    A client that goes away, a Cancel-After or JOB_TIMEOUT_SECONDS stops the model."""
    settings = request.app[state.SETTINGS]
    response = await open_events(request)

    async def send(number: int, chunk: bytes) -> bool:
        await response.write(event(b"output", chunk, number))
        return True

    most = settings.max_stream_chunks
    try:
        outcome = await drain(chunks, wait, settings.job_timeout_seconds, most, send)
    except ConnectionResetError:  # the client went away: the model was stopped
        return response, deadlines.CANCELED
    except ServiceError as exc:  # the replica stops (ShuttingDown): said in the stream
        outcome = Outcome(ok=False, error=exc.message)
    ended = deadlines.ended(outcome)
    request.app[state.METRICS].count_prediction(
        model, "sync", outcome.ok or ended.value, tenant_of(request), error=outcome.error
    )
    if outcome.ok:
        output = {"input": raw, "result": orjson.Fragment(outcome.payload)}
        last = event(b"done", orjson.dumps({"status": "done", "output": output}))
    else:
        last = event(b"error", orjson.dumps({"error": outcome.error, "status": ended.value}))
    try:
        await response.write(last)
        await response.write_eof()
    except ConnectionResetError:  # gone after the last chunk: the outcome stands
        pass
    return response, outcome
