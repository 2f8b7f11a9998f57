"""The job: what a queued prediction is, and how it lies in Redis.

The Redis layout, written down once (names from `service.redis.keys`, defaults shown; the
scripts are in `service/lua/`, each saying what it reads and writes; docs/redis.md has
the same as a table):

- `predictions`, a stream: one entry per job waiting or running, with `id`, `model`,
  `input` (JSON), `rid` (request id), `at` (created). submit.lua adds entries; finish.lua
  acks and deletes them. Its consumer group `workers` holds who has which entry
  (XREADGROUP by workers and by submit.lua's lane, XAUTOCLAIM, XCLAIM as heartbeat).
- `prediction:<id>`, a hash with a TTL: the record (fields below). submit.lua creates
  it; mark.lua starts or ends it (start_job.lua); finish.lua ends it; cancel.lua cancels.
- `predictions:idem:<key>`, a string with a TTL: `<prediction id>|<body digest>`.
  submit.lua.
- `predictions:backlog`, a hash: jobs queued or running, by model (0 deleted). submit.lua
  raises it; finish.lua lowers it once per entry it acks.
- `predictions:dead`, a stream of given-up jobs: `key`, `entry`, `reason`, `at`. mark.lua
  adds; replay.lua (and the admin purge) delete.
- `predictions:webhooks`, a stream of deliveries due: `key` (and `attempt`, `since` on a
  retry), read through the group `webhooks`. finish.lua, mark.lua (the jobs it fails) and
  release_due.lua add them.
- `predictions:webhooks:retry`, a sorted set of failed deliveries
  (`key|attempt|since`) by retry time. delivery.py adds; release_due.lua moves back.
- `predictions:done` and `predictions:started`, pub/sub channels of record keys,
  comma-separated. done: mark, finish, cancel; started: mark, submit (the lane).
- `predictions:probe:<consumer>`, a string living 10 s: readiness' write probe.

Record fields: `status` (see `Status`), `model`, `input` (JSON as submitted), `created_at`,
`started_at`, `finished_at` (Unix seconds), `attempts` (deliveries started), `result`
(JSON; `null` unless done), `error` (failed only), `request_id`, and with a webhook
`webhook` and `webhook_events` (`done,failed`); a dead letter's `dead_entry` (its id in the
dead-letter stream) and, once replayed, `requeued_at`. A final record (done, failed,
canceled) is never written again, but for an operator's replay of a dead letter.
"""

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
RUNNABLE = (b"queued", b"processing")


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


def script_entries(raw: list[Any]) -> list[Any]:
    """Stream entries as a script answers them ([id, [field, value, ...]], or [id, None]
    for one deleted while pending) in the shape redis-py gives XREADGROUP's."""
    return [
        (entry_id, dict(zip(flat[::2], flat[1::2], strict=True)) if flat else None)
        for entry_id, flat in raw
    ]


def parse_entries(raw: list[Any]) -> list[Entry]:
    """Entries from a stream reply; an entry deleted while pending (no fields) is left out."""
    out = []
    for entry_id, fields in raw:
        if not fields:
            continue
        rid, at, cancel = fields.get(b"rid"), fields.get(b"at"), fields.get(b"cancel")
        tp = fields.get(b"tp")
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

    @classmethod
    def just_ended(
        cls, entry: Entry, outcome: Outcome, now: float, flat: list[Any], tenant: str = ""
    ) -> JobRecord | None:
        """The record finish.lua answered for one job: read back whole, or (marked '=')
        written by that call, so all but four fields are what the worker sent it (half the
        cost of parsing the whole hash, on every Prefer: wait answer) and the tenant whose
        stream it came from."""
        if not flat or flat[0] != b"=":
            return cls.from_flat(entry.prediction_id, flat)
        _, started_at, attempts, created_at, webhook = flat
        return cls(
            prediction_id=entry.prediction_id,
            status=Status.DONE
            if outcome.ok
            else (Status.CANCELED if outcome.canceled else Status.FAILED),
            model=entry.model,
            input=orjson.loads(entry.input_json),
            created_at=float(created_at),
            started_at=None if started_at is None else float(started_at),
            finished_at=now,
            attempts=int(attempts or 0),
            result=orjson.loads(outcome.payload) if outcome.ok else None,
            error=None if outcome.ok or outcome.canceled else outcome.error,
            request_id=entry.request_id or None,
            webhook=webhook.decode() if webhook else None,
            tenant=tenant,
            traceparent=entry.traceparent,
        )
