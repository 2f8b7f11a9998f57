"""The job: what a queued prediction is (the job to queue, the stream entry a worker
reads, the record any replica reads back, its status and a model call's outcome), and its
ids. How it lies in Redis (every key, every field of the record, who writes each) is
written once, in docs/redis.md."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel

# Ids. Prediction ids are random UUID4 strings: they are the only key to a job's result,
# so unguessable; read from a buffer of OS randomness 4 KiB at a time, because
# uuid.uuid4() makes one getrandom() system call per id (13% of an async submit's CPU time
# when measured). Request ids only tie log lines and records together: unique, not secret,
# so a random prefix per process and a counter (0.2 us, against 0.75 us for random bytes
# turned into text, about 2% of a sync request).
_CHUNK = 4096
_lock = threading.Lock()
_buffer = bytearray()
_request_prefix = ""  # made on first use: random, so replicas never share request ids
_request_counter = itertools.count()


def _forget_after_fork() -> None:
    # A forked child must not hand out the ids its parent will also hand out.
    global _request_prefix
    _buffer.clear()
    _request_prefix = ""


os.register_at_fork(after_in_child=_forget_after_fork)


def new_id() -> str:
    """A random (version 4, RFC 4122 variant) UUID in its canonical string form."""
    with _lock:
        if len(_buffer) < 16:
            _buffer.extend(os.urandom(_CHUNK))
        raw = bytes(_buffer[:16])
        del _buffer[:16]
    h = raw.hex()
    variant = "89ab"[raw[8] >> 6 & 3]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"


def new_request_id() -> str:
    """A UUID4-shaped request id: a prefix random per process (70 bits), then a 48-bit
    counter. Unique per process, not unguessable (use new_id for that)."""
    global _request_prefix
    if not _request_prefix:
        _request_prefix = new_id()[:24]
    return f"{_request_prefix}{next(_request_counter) & 0xFFFFFFFFFFFF:012x}"


class Status(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"
    #: Its Cancel-After passed before it started: it never ran.
    ABORTED = "aborted"

    @property
    def final(self) -> bool:
        return self in (Status.DONE, Status.FAILED, Status.CANCELED, Status.ABORTED)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One item's result: ``payload`` is the output as JSON when ``ok``, else ``error`` says
    why; ``canceled``: its job ran past its Cancel-After (whatever the model answered);
    ``lost``: its model process died running it alone (a queued job runs again on its
    next delivery, and is dead-lettered past MAX_DELIVERIES)."""

    ok: bool
    payload: bytes = b"null"
    error: str = ""
    canceled: bool = False
    lost: bool = False


#: Statuses before a mark after which a job (re)runs: queued, or processing when it is
#: delivered again.
RUNNABLE = (Status.QUEUED, Status.PROCESSING)


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to queue: its record starts as ``queued`` with these fields (and the time it
    was written as its ``created_at``)."""

    prediction_id: str
    model: str
    #: The input as JSON, written by the request's own handler: a value that cannot be
    #: written fails that request alone, never a submit call shared with others.
    input_json: bytes
    request_id: str = ""
    #: Where its Idempotency-Key is stored ('': none), qualified by tenant and bulk item
    #: (`keys.idempotency_name`): another tenant's key never answers its id.
    idempotency_key: str = ""
    body_digest: str = ""
    webhook: str = ""
    webhook_events: str = ""
    #: Someone on this replica waits for it (Prefer: wait): it may take the direct lane.
    waited: bool = False
    #: "high", "normal" or "low": which of its partition's streams it is queued on.
    priority: str = "normal"
    #: Seconds from submission after which, if it has not started, it never runs and ends
    #: aborted (Cancel-After); 0: none.
    cancel_after: float = 0.0
    #: Its owner ("": the default tenant): the tenant's streams take it.
    tenant: str = ""
    #: The W3C traceparent of the submitting request's span ('': not traced).
    traceparent: str = ""
    #: Its JOB_TIMEOUT_SECONDS counts from when it starts, not from its submission: a job
    #: of a batch (the OpenAI-compatible batch API), which may rightly wait for hours.
    untimed_wait: bool = False


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: the job it carries and the stream id to acknowledge."""

    entry_id: bytes
    prediction_id: str
    model: str
    input_json: bytes
    request_id: str = ""
    created_at: float = 0.0
    #: When its Cancel-After passes (Unix seconds); 0.0: none.
    cancel_at: float = 0.0
    #: The submitting request's traceparent ('': not traced).
    traceparent: str = ""
    #: Its time limit counts from its start (`NewJob.untimed_wait`).
    untimed_wait: bool = False


def entry_fields(job: NewJob, created_at: str) -> dict[str, Any]:
    """A job's stream entry, as submit.lua writes it."""
    return {
        "id": job.prediction_id,
        "model": job.model,
        "input": job.input_json,
        "rid": job.request_id,
        "at": created_at,
    }


def queued_record(job: NewJob, created_at: str) -> dict[str, Any]:
    """A queued job's record, as submit.lua writes it (without a webhook)."""
    return {
        "status": "queued",
        "model": job.model,
        "input": job.input_json,
        "created_at": created_at,
        "attempts": 0,
        "request_id": job.request_id,
    }


def stream_entries(reply: Any) -> list[Any]:
    """The entries of the one stream in an XREADGROUP reply (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return next(iter(reply.values()))
    return reply[0][1]


def parse_entries(raw: list[Any]) -> list[Entry]:
    """Entries from a stream reply; an entry deleted while pending (no fields) is left out."""
    out = []
    for entry_id, fields in raw:
        if not fields:
            continue
        rid, at, cancel = fields.get(b"rid"), fields.get(b"at"), fields.get(b"cancel")
        tp, untimed = fields.get(b"tp"), fields.get(b"nt")
        out.append(
            Entry(
                entry_id,
                fields[b"id"].decode(),
                fields[b"model"].decode(),
                fields[b"input"],
                rid.decode() if rid else "",
                float(at) if at else 0.0,
                float(cancel) if cancel else 0.0,
                tp.decode() if tp else "",
                untimed == b"1",
            )
        )
    return out


def deleted_ids(raw: list[Any]) -> list[bytes]:
    """The ids of entries deleted while pending (XREADGROUP and XAUTOCLAIM show them empty)."""
    return [entry_id for entry_id, fields in raw if not fields]


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _number(value: bytes | None) -> float | None:
    return None if value is None else float(value)


class JobRecord(BaseModel):
    """One job's record, as it is in its hash."""

    prediction_id: str
    status: Status
    model: str
    input: Any
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    result: Any = None
    error: str | None = None
    request_id: str | None = None
    webhook: str | None = None
    #: The tenant that submitted it ("": the default one); only it may see the job.
    tenant: str = ""
    #: The submitting request's traceparent ('': not traced).
    traceparent: str = ""

    @classmethod
    def from_redis(cls, prediction_id: str, fields: Mapping[bytes, bytes]) -> JobRecord:
        result = fields.get(b"result")
        return cls(
            prediction_id=prediction_id,
            status=Status(fields[b"status"].decode()),
            model=fields[b"model"].decode(),
            input=orjson.loads(fields[b"input"]),
            created_at=float(fields[b"created_at"]),
            started_at=_number(fields.get(b"started_at")),
            finished_at=_number(fields.get(b"finished_at")),
            attempts=int(fields.get(b"attempts", b"0")),
            result=None if result is None else orjson.loads(result),
            error=_text(fields.get(b"error")),
            request_id=_text(fields.get(b"request_id")) or None,
            webhook=_text(fields.get(b"webhook")) or None,
            tenant=_text(fields.get(b"tenant")) or "",
            traceparent=_text(fields.get(b"traceparent")) or "",
        )

    @classmethod
    def from_flat(cls, prediction_id: str, flat: list[bytes]) -> JobRecord | None:
        """From the flat field, value, field, value... list a script answers (None if empty)."""
        if not flat:
            return None
        return cls.from_redis(prediction_id, dict(zip(flat[::2], flat[1::2], strict=True)))


def prediction_view(record: JobRecord) -> dict[str, Any]:
    """The GET /predict/{id} answer for a record, shaped as docs/api.md says (also what a
    webhook posts)."""
    if record.status is Status.DONE:
        result = record.result
    elif record.status in (Status.FAILED, Status.CANCELED, Status.ABORTED):
        result = None
    else:
        result = "processing"
    view: dict[str, Any] = {
        "prediction_id": record.prediction_id,
        "status": record.status.value,
        "output": {"input": record.input, "result": result},
        "model": record.model,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "attempts": record.attempts,
        "request_id": record.request_id,
    }
    if record.status is Status.FAILED:
        view["error"] = record.error
    return view
