"""The calls of the job records: mark.lua, finish.lua, cancel.lua, read.lua, keep_sync.lua,
replay.lua."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.job import Entry, Outcome, Status
from service.redis.calls import Scripts, text
from service.redis.keys import Keys
from service.redis.words import Ending, Marked, Replayed

#: A record as a script answers it: its fields and values, flat ([] when it is gone).
Flat = list[bytes]


@dataclass(frozen=True, slots=True)
class Limits:
    """What mark.lua holds a job to: its record's TTL (s), deliveries before it is
    dead-lettered, its time limit from submission (s, 0: none)."""

    ttl: int
    max_deliveries: int
    job_timeout: float


async def mark(
    scripts: Scripts,
    keys: Keys,
    jobs: Sequence[tuple[str, bytes]],
    now: float,
    limits: Limits,
) -> list[Status | Marked]:
    """Moves each (prediction id, entry id) of one partition's batch on: started, or ended
    for a deadline passed or too many deliveries. Answers each one's status before, or
    what ended it (`Marked`; GONE for a record that expired)."""
    names = [keys.dead_letters, keys.webhooks] + [keys.record(p) for p, _ in jobs]
    args: list[Any] = [
        repr(now),
        limits.ttl,
        limits.max_deliveries,
        limits.job_timeout,
        keys.to_replica(""),
        keys.publish,
    ]
    args.extend(entry_id for _, entry_id in jobs)
    reply = await scripts.run("mark", names, args)
    return [_MARK_WORDS[word] for word in reply]


#: mark.lua's answers, by the bytes of the reply (a lookup, not a parse, per job).
_MARK_WORDS: dict[bytes, Status | Marked] = {
    **{s.value.encode(): s for s in Status},
    **{m.value.encode(): m for m in Marked},
}
_DONE, _FAILED, _CANCELED = (e.value.encode() for e in Ending)


@dataclass(frozen=True, slots=True)
class Ended:
    """finish.lua's answer for one job asked for: written by this call (then ``fields``
    holds only started_at, attempts, created_at and webhook), or as it was (``fields`` the
    whole record; empty when it is gone)."""

    written: bool
    fields: Mapping[bytes, bytes]


_ENDED_FIELDS = (b"started_at", b"attempts", b"created_at", b"webhook")


async def finish(
    scripts: Scripts,
    keys: Keys,
    finished: Sequence[tuple[Entry, Outcome]],
    acked: Sequence[Entry],
    now: float,
    ttl: int,
    wanted: Sequence[bool] = (),
) -> list[Ended | None]:
    """Writes the final records of ``finished`` once and acks (and deletes) ``acked``, of
    the stream of ``keys``: one call. Answers the jobs ``wanted`` flags (None for others)."""
    names = [keys.stream, keys.webhooks, keys.backlog]
    args: list[Any] = [
        keys.group,
        repr(now),
        ttl,
        keys.to_replica(""),
        keys.publish,
        "".join("1" if w else "0" for w in wanted) if any(wanted) else "",
    ]
    for entry, outcome in finished:
        names.append(keys.record(entry.prediction_id))
        if outcome.ok:
            args.append(_DONE + outcome.payload)
        else:
            args.append((_CANCELED if outcome.canceled else _FAILED) + outcome.error.encode())
    for entry in acked:
        args += (entry.entry_id, entry.model)
    reply = await scripts.run("finish", names, args)
    if not any(wanted):
        return [None] * len(finished)
    out: list[Ended | None] = []
    for flat in reply:
        if not flat:
            out.append(None)
        elif flat[0] == b"=":
            out.append(Ended(True, dict(zip(_ENDED_FIELDS, flat[1:], strict=True))))
        else:
            out.append(Ended(False, _fields(flat)))
    return out


async def cancel(
    scripts: Scripts,
    keys: Keys,
    prediction_id: str,
    now: float,
    tenant: str,
    streaming: Sequence[str] = (),
) -> tuple[Status | None, Flat, bool]:
    """Cancels the job if it is still queued and ``tenant``'s, or asks it to stop if it
    runs and its model is one of ``streaming``: its status before (None when unknown, or
    another tenant's), its record as it is now, and whether it was asked to stop."""
    before, flat, stopping = await scripts.run(
        "cancel",
        [keys.record(prediction_id)],
        [repr(now), keys.to_replica(""), keys.publish, tenant, *streaming],
    )
    return (Status(text(before)) if before else None), flat, bool(stopping)


async def read(
    scripts: Scripts,
    keys: Keys,
    prediction_ids: Sequence[str],
    watched: Sequence[bool] = (),
    replica: str = "",
) -> list[Flat]:
    """The records of jobs of one partition (each [] when it is gone): one call. ``replica``
    joins the watchers of the jobs ``watched`` flags that are still queued or running."""
    args = [replica, "".join("1" if w else "0" for w in watched)] if any(watched) else []
    reply: list[Flat] = await scripts.run("read", [keys.record(p) for p in prediction_ids], args)
    return reply


async def keep_sync(
    scripts: Scripts,
    keys: Keys,
    prediction_id: str,
    status: Status,
    fields: Mapping[str, Any],
    ttl: int,
) -> bool:
    """Writes the final record of a sync request that named a webhook and, when its events
    name how it ended, its delivery; answers whether one was queued."""
    flat = [item for pair in fields.items() for item in pair]
    names = [keys.record(prediction_id), keys.webhooks]
    return bool(await scripts.run("keep_sync", names, [ttl, status.value, *flat]))


async def replay(
    scripts: Scripts, keys: Keys, letters: Sequence[tuple[str, str]], now: float, ttl: int
) -> list[Replayed]:
    """Queues again, on the streams of ``keys``'s tenant, the jobs of (dead-letter entry
    id, prediction id) pairs of one partition: each one's answer."""
    high, normal, low = keys.priorities
    names = [normal.stream, keys.dead_letters, keys.backlog, high.stream, low.stream]
    names += [keys.record(prediction_id) for _, prediction_id in letters]
    args: list[Any] = [repr(now), ttl]
    for letter in letters:
        args += letter
    reply = await scripts.run("replay", names, args)
    return [Replayed(text(word)) for word in reply]


def _fields(flat: Flat) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))
