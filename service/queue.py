"""The work queue: one Redis Stream read through one consumer group."""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from . import lua
from .coalesce import Coalescer
from .errors import IdempotencyConflict, QueueFull
from .job import Entry, NewJob, deleted_ids, parse_entries, stream_entries
from .keys import Keys

log = logging.getLogger(__name__)


class Lane(Protocol):
    """Where the jobs that a submit delivered straight to this replica go (the direct
    lane, `service.lane`): submit.lua started them and delivered them to ``consumer``."""

    consumer: str

    def has_room(self) -> bool: ...

    def take(self, entries: list[Entry]) -> None: ...


class JobQueue:
    """Submits jobs (concurrent submits coalesced into one script call), reads entries for
    workers, takes over idle ones, keeps long ones claimed. With a ``lane``, a submit
    holding a job someone here waits for may be delivered straight to this replica."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        ttl_seconds: int,
        max_queue: int = 0,
        *,
        lane: Lane | None = None,
        version: tuple[int, ...] = (7,),
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl_seconds
        self._max_queue = max_queue
        self._lane = lane
        self._submit_script = lua.register(redis, "submit", version)
        self._submits: Coalescer[NewJob, str] = Coalescer(self._write)

    async def ensure_group(self) -> None:
        """Creates the stream and group if missing; from id 0 so no queued job is skipped."""
        try:
            await self._redis.xgroup_create(
                self._keys.stream, self._keys.group, id="0", mkstream=True
            )
            log.info("created consumer group %s on stream %s", self._keys.group, self._keys.stream)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def submit(self, job: NewJob) -> str:
        """Writes the record and queues the job; answers the prediction id once both are in
        Redis (an earlier job's id for a repeated idempotency key). QueueFull (429) when
        MAX_QUEUE jobs wait; IdempotencyConflict (409) for a reused key with another body.

        Submits of concurrent requests share one script call (one round trip, atomic), so
        each job's record and stream entry are written together, and a busy server makes
        few round trips.
        """
        reply = await self._submits.add(job)
        if reply == "ok":
            return job.prediction_id
        if reply.startswith("dup:"):
            return reply.removeprefix("dup:")
        if reply == "full":
            raise QueueFull(f"The queue holds {self._max_queue} jobs; try again shortly.")
        raise IdempotencyConflict("This Idempotency-Key was used with a different request body.")

    async def submit_all(self, jobs: list[NewJob]) -> list[str]:
        """Queues every job, or none when they do not all fit under MAX_QUEUE (QueueFull):
        one script call, one round trip. Answers the prediction ids in order (the earlier
        ids when the jobs carry idempotency keys used before for the same body)."""
        replies = await self._write(jobs, whole=True)
        if any(r == "full" for r in replies):
            raise QueueFull(f"The queue cannot take {len(jobs)} more jobs; try again shortly.")
        if any(r == "conflict" for r in replies):
            raise IdempotencyConflict(
                "This Idempotency-Key was used with a different request body."
            )
        return [
            r.removeprefix("dup:") if r.startswith("dup:") else job.prediction_id
            for job, r in zip(jobs, replies, strict=True)
        ]

    async def _write(self, jobs: list[NewJob], whole: bool = False) -> list[str]:
        keys = [self._keys.stream]
        now = time.time()
        args: list[Any] = [self._ttl, self._max_queue, "1" if whole else "0", repr(now)]
        idempotency: list[str] = []
        for job in jobs:
            keys.append(self._keys.record(job.prediction_id))
            args += (job.prediction_id, job.model, job.input_json, job.request_id)
            if job.idempotency_key or job.webhook:
                index = 0
                if job.idempotency_key:
                    idempotency.append(self._keys.idempotency(job.idempotency_key))
                    index = len(jobs) + 1 + len(idempotency)  # its place in KEYS (from 1)
                extras = [index, job.body_digest, job.webhook, job.webhook_events]
                args.append(orjson.dumps(extras))
            else:
                args.append("")
        keys += idempotency
        # A flush with a job someone here waits for goes to the lane whole (the others
        # would be run by a worker of some replica just as soon).
        lane = self._lane
        if lane is not None and not whole and lane.has_room() and any(j.waited for j in jobs):
            args += (self._keys.group, lane.consumer, self._keys.started)
        else:
            lane = None
        replies: Any = await self._submit_script(keys=keys, args=args)
        if isinstance(replies, int):  # every job queued
            return ["ok"] * len(jobs)
        if lane is not None and len(replies) == 2 and isinstance(replies[1], list):
            replies, entry_ids = replies  # delivered to this replica's lane
            lane.take(
                [
                    Entry(entry_id, j.prediction_id, j.model, j.input_json, j.request_id, now)
                    for j, entry_id in zip(jobs, entry_ids, strict=True)
                    if entry_id
                ]
            )
            if isinstance(replies, int):
                return ["ok"] * len(jobs)
        return [r.decode() for r in replies]

    async def read(
        self, consumer: str, count: int, block_ms: int | None, *, own_pending: bool = False
    ) -> list[Entry]:
        """New entries for ``consumer`` (or its own unacked ones with ``own_pending``)."""
        reply = await self._redis.xreadgroup(
            self._keys.group,
            consumer,
            {self._keys.stream: "0" if own_pending else ">"},
            count=count,
            block=None if own_pending else block_ms,
        )
        raw = stream_entries(reply)
        gone = deleted_ids(raw)
        if gone:
            await self._redis.xack(self._keys.stream, self._keys.group, *gone)
        return parse_entries(raw)

    async def heartbeat(self, consumer: str, entry_ids: list[bytes]) -> None:
        """Resets the idle time of ``consumer``'s in-flight entries (XCLAIM to itself), so
        a long job is not reclaimed by another replica while it still runs.
        """
        ids: list[Any] = list(entry_ids)
        if ids:
            await self._redis.xclaim(
                self._keys.stream, self._keys.group, consumer, 0, ids, justid=True
            )

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Takes over entries other consumers left idle longer than ``min_idle_ms``.

        XAUTOCLAIM answers [cursor, entries] on Redis 6.2 and [cursor, entries, deleted ids]
        on 7.x; the cursor is followed until ``count`` entries are found or it returns to 0.
        """
        claimed: list[Entry] = []
        cursor: Any = "0-0"
        while len(claimed) < count:
            reply = await self._redis.xautoclaim(
                self._keys.stream,
                self._keys.group,
                consumer,
                min_idle_ms,
                start_id=cursor,
                count=count - len(claimed),
            )
            cursor, raw = reply[0], reply[1]
            gone = deleted_ids(raw)
            if gone:
                await self._redis.xack(self._keys.stream, self._keys.group, *gone)
            claimed.extend(parse_entries(raw))
            if cursor in (b"0-0", "0-0"):
                break
        if claimed:
            log.info("%s reclaimed %d idle entries", consumer, len(claimed))
        return claimed
