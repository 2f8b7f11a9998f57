"""The calls of the streams: submit.lua, take.lua, hand_back.lua, retire.lua, limit.lua."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from service.job import Entry, NewJob
from service.redis.calls import Runner, Scripts, text
from service.redis.keys import Keys
from service.redis.words import Submitted


@dataclass(frozen=True, slots=True)
class Lane:
    """Where a submit may deliver its jobs at once (the direct lane): ``consumer`` of the
    partition's group; the jobs' watchers are told they started on their channels (the
    partition's prefix of them, `Keys.to_replica`)."""

    group: str
    consumer: str
    prefix: str
    publish: str


@dataclass(frozen=True, slots=True)
class Answer:
    """submit.lua's answer for one job, and for a known Idempotency-Key the earlier id."""

    word: Submitted
    earlier: str = ""


@dataclass(frozen=True, slots=True)
class SubmitReply:
    answers: list[Answer]
    #: The entry id of each job when the lane took them ('' for one not written); None
    #: when the jobs were queued for any worker.
    delivered: list[bytes] | None = None


_ALL_OK = Answer(Submitted.OK)


async def submit(
    scripts: Scripts,
    keys: Keys,
    jobs: Sequence[NewJob],
    *,
    ttl: int,
    limit: int,
    now: float,
    whole: bool = False,
    lane: Lane | None = None,
    via: Runner | None = None,
    watcher: str = "",
) -> SubmitReply:
    """Writes the records of ``jobs`` (all of one partition, tenant and priority: the
    stream of ``keys``) and queues them, or (``whole``) all or none; with ``lane``, may
    deliver them at once to its consumer. ``limit`` bounds the tenant's three streams of
    the partition (0: none). ``watcher``: the replica told when a job someone waits for
    (`NewJob.waited`) starts or ends."""
    keys_out, args = _submit_arguments(
        keys, jobs, ttl=ttl, limit=limit, now=now, whole=whole, watcher=watcher
    )
    if lane is not None:
        args += (lane.group, lane.consumer, lane.prefix, lane.publish)
    reply: Any = await scripts.run("submit", keys_out, args, via)
    delivered = None
    if (
        lane is not None
        and isinstance(reply, list)
        and len(reply) == 2
        and isinstance(reply[1], list)
    ):
        reply, delivered = reply
    if isinstance(reply, int):  # every job queued
        return SubmitReply([_ALL_OK] * len(jobs), delivered)
    return SubmitReply([_answer(text(word)) for word in reply], delivered)


def _submit_arguments(
    keys: Keys,
    jobs: Sequence[NewJob],
    *,
    ttl: int,
    limit: int,
    now: float,
    whole: bool,
    watcher: str = "",
) -> tuple[list[Any], list[Any]]:
    """submit.lua's KEYS and ARGV, in the order of its header (the lane's four arguments
    aside). ``watcher``: the replica that waits for the jobs someone waits for."""
    names: list[Any] = [keys.stream] + [s.stream for s in keys.priorities if s != keys]
    args: list[Any] = [
        ttl,
        limit,
        "1" if whole else "0",
        repr(now),
        "" if keys.priority == "normal" else keys.priority,
        keys.tenant,
    ]
    idempotency: list[str] = []
    for job in jobs:
        names.append(keys.record(job.prediction_id))
        args += (job.prediction_id, job.model, job.input_json, job.request_id)
        if (
            job.idempotency_key
            or job.webhook
            or job.cancel_after
            or job.traceparent
            or job.untimed_wait
            or (watcher and job.waited)
        ):
            index = 0  # the place of its idempotency key in KEYS, from 1 (0: none)
            if job.idempotency_key:
                idempotency.append(keys.idempotency(job.idempotency_key))
                index = 3 + len(jobs) + len(idempotency)
            cancel_at = repr(now + job.cancel_after) if job.cancel_after else ""
            extras = [index, job.body_digest, job.webhook, job.webhook_events, cancel_at]
            waits = watcher if job.waited else ""
            if job.traceparent or job.untimed_wait or waits:
                extras.append(job.traceparent)
            if job.untimed_wait or waits:
                extras.append("1" if job.untimed_wait else "")
            if waits:
                extras.append(waits)
            args.append(orjson.dumps(extras))
        else:
            args.append("")
    return names + idempotency + [keys.backlog], args


def _answer(word: str) -> Answer:
    if word.startswith(Submitted.DUP):
        return Answer(Submitted.DUP, word.removeprefix(Submitted.DUP))
    return Answer(Submitted(word))


async def take(
    scripts: Scripts, streams: Sequence[Keys], consumer: str, count: int
) -> list[list[Any]]:
    """Up to ``count`` new entries in all, from the first of ``streams`` on (never
    blocks): per stream, its entries in the shape redis-py gives XREADGROUP's."""
    reply: Any = await scripts.run(
        "take", [k.stream for k in streams], [streams[0].group, consumer, count]
    )
    return [
        [
            (entry_id, dict(zip(flat[::2], flat[1::2], strict=True)) if flat else None)
            for entry_id, flat in raw
        ]
        for raw in reply
    ]


async def hand_back(scripts: Scripts, keys: Keys, consumer: str, entries: Sequence[Entry]) -> int:
    """Puts ``consumer``'s unfinished ``entries`` of the stream of ``keys`` back on it, for
    any replica to read at once; answers how many went back."""
    if not entries:
        return 0
    names = [keys.stream] + [keys.record(e.prediction_id) for e in entries]
    args: list[Any] = [keys.group, consumer] + [e.entry_id for e in entries]
    return int(await scripts.run("hand_back", names, args))


async def retire(scripts: Scripts, keys: Keys, consumers: Sequence[str]) -> int:
    """Deletes ``consumers`` from the group of the stream of ``keys`` where they hold
    nothing pending; answers how many were deleted."""
    return int(await scripts.run("retire", [keys.stream], [keys.group, *consumers]))


async def limit(scripts: Scripts, bucket: str, rate: float, burst: int) -> int:
    """Takes a token from the bucket ``bucket`` (``rate`` a second, up to ``burst``):
    0 when there was one, else the milliseconds until there is."""
    return int(await scripts.run("limit", [bucket], [repr(rate), burst]))
