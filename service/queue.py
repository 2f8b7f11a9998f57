"""The work queue: one Redis Stream read through one consumer group."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from . import lua
from .coalesce import Coalescer
from .durable import Durable
from .errors import IdempotencyConflict, QueueFull
from .job import Entry, NewJob, deleted_ids, parse_entries, stream_entries
from .keys import Keys, Partitions

log = logging.getLogger(__name__)


class Lane(Protocol):
    """Where the jobs that a submit delivered straight to this replica go (the direct
    lane, `service.lane`): submit.lua started them and delivered them to ``consumer`` in
    the group of their partition (``keys``)."""

    consumer: str

    def has_room(self) -> bool: ...

    def take(self, keys: Keys, entries: list[Entry]) -> None: ...


class JobQueue:
    """Submits jobs (concurrent submits coalesced: one script call per partition), reads
    entries for workers, takes over idle ones, keeps long ones claimed. With a ``lane``, a
    submit holding a job someone here waits for may be delivered straight to this replica.

    ``max_queue`` bounds each partition's stream (MAX_QUEUE divided among partitions)."""

    def __init__(
        self,
        redis: Redis,
        partitions: Partitions,
        ttl_seconds: int,
        max_queue: int = 0,
        *,
        lane: Lane | None = None,
        version: tuple[int, ...] = (7,),
        durable: Durable | None = None,
    ) -> None:
        self._redis = redis
        self._durable = durable
        self.partitions = partitions
        self._ttl = ttl_seconds
        count = len(partitions)
        self._max_queue = max_queue
        self._limit = 0 if max_queue <= 0 else max(1, -(-max_queue // count))
        self._lane = lane
        self._submit_script = lua.register(redis, "submit", version)
        self._hand_back = lua.register(redis, "hand_back", version)
        self._retire = lua.register(redis, "retire", version)
        self._submits: Coalescer[NewJob, str] = Coalescer(self._write_all)

    async def ensure_group(self) -> None:
        """Creates every partition's stream and group if missing; from id 0 so no queued
        job is skipped."""
        for keys in self.partitions.all:
            try:
                await self._redis.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
                log.info("created consumer group %s on stream %s", keys.group, keys.stream)
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
        partition = self.partitions.of(jobs[0].prediction_id)
        if any(self.partitions.of(job.prediction_id) is not partition for job in jobs):
            raise ValueError("a bulk submit's jobs must share one partition")
        replies = await self._write(partition, jobs, whole=True)
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

    async def _write_all(self, jobs: list[NewJob]) -> list[str]:
        """One flush of coalesced submits: one script call per partition they fall in."""
        partitions = self.partitions
        if len(partitions) == 1:
            return await self._write(partitions[0], jobs)
        groups: dict[int, list[int]] = {}
        for position, job in enumerate(jobs):
            groups.setdefault(partitions.of(job.prediction_id).index, []).append(position)
        answers = await asyncio.gather(
            *(self._write(partitions[p], [jobs[i] for i in at]) for p, at in groups.items())
        )
        out = [""] * len(jobs)
        for at, replies in zip(groups.values(), answers, strict=True):
            for position, reply in zip(at, replies, strict=True):
                out[position] = reply
        return out

    async def _write(self, partition: Keys, jobs: list[NewJob], whole: bool = False) -> list[str]:
        keys = [partition.stream]
        now = time.time()
        args: list[Any] = [self._ttl, self._limit, "1" if whole else "0", repr(now)]
        idempotency: list[str] = []
        for job in jobs:
            keys.append(partition.record(job.prediction_id))
            args += (job.prediction_id, job.model, job.input_json, job.request_id)
            if job.idempotency_key or job.webhook:
                index = 0
                if job.idempotency_key:
                    idempotency.append(partition.idempotency(job.idempotency_key))
                    index = len(jobs) + 1 + len(idempotency)  # its place in KEYS (from 1)
                extras = [index, job.body_digest, job.webhook, job.webhook_events]
                args.append(orjson.dumps(extras))
            else:
                args.append("")
        keys += idempotency
        keys.append(partition.backlog)
        # A flush with a job someone here waits for goes to the lane whole (the others
        # would be run by a worker of some replica just as soon).
        lane = self._lane
        if lane is not None and not whole and lane.has_room() and any(j.waited for j in jobs):
            args += (partition.group, lane.consumer, partition.started, partition.publish)
        else:
            lane = None
        if self._durable is None:
            replies: Any = await self._submit_script(keys=keys, args=args)
        else:
            replies = await self._durable.call(self._submit_script, keys, args)
        if isinstance(replies, int):  # every job queued
            return ["ok"] * len(jobs)
        if lane is not None and len(replies) == 2 and isinstance(replies[1], list):
            replies, entry_ids = replies  # delivered to this replica's lane
            lane.take(
                partition,
                [
                    Entry(entry_id, j.prediction_id, j.model, j.input_json, j.request_id, now)
                    for j, entry_id in zip(jobs, entry_ids, strict=True)
                    if entry_id
                ],
            )
            if isinstance(replies, int):
                return ["ok"] * len(jobs)
        return [r.decode() for r in replies]

    async def read(
        self,
        keys: Keys,
        consumer: str,
        count: int,
        block_ms: int | None,
        *,
        own_pending: bool = False,
    ) -> list[Entry]:
        """New entries of partition ``keys`` for ``consumer`` (or its own unacked ones with
        ``own_pending``)."""
        reply = await self._redis.xreadgroup(
            keys.group,
            consumer,
            {keys.stream: "0" if own_pending else ">"},
            count=count,
            block=None if own_pending else block_ms,
        )
        raw = stream_entries(reply)
        gone = deleted_ids(raw)
        if gone:
            await self._redis.xack(keys.stream, keys.group, *gone)
        return parse_entries(raw)

    async def heartbeat(self, keys: Keys, consumer: str, entry_ids: list[bytes]) -> None:
        """Resets the idle time of ``consumer``'s in-flight entries (XCLAIM to itself), so
        a long job is not reclaimed by another replica while it still runs.
        """
        ids: list[Any] = list(entry_ids)
        if ids:
            await self._redis.xclaim(keys.stream, keys.group, consumer, 0, ids, justid=True)

    async def hand_back(self, keys: Keys, consumer: str, entries: Sequence[Entry]) -> int:
        """Puts ``consumer``'s unfinished ``entries`` of partition ``keys`` back on the queue
        for any replica to read at once (a stopping replica's jobs; see hand_back.lua).
        Answers how many went back."""
        if not entries:
            return 0
        names = [keys.stream] + [keys.record(e.prediction_id) for e in entries]
        args: list[Any] = [keys.group, consumer] + [e.entry_id for e in entries]
        return int(await self._hand_back(keys=names, args=args))

    async def retire(self, consumers: Sequence[str]) -> None:
        """Deletes these consumers (a stopping replica's) from every partition's group where
        they hold nothing pending (see retire.lua)."""
        if consumers:
            await asyncio.gather(
                *(
                    self._retire(keys=[keys.stream], args=[keys.group, *consumers])
                    for keys in self.partitions.all
                )
            )

    async def reclaim(self, keys: Keys, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Takes over entries other consumers left idle longer than ``min_idle_ms``.

        XAUTOCLAIM answers [cursor, entries] on Redis 6.2 and [cursor, entries, deleted ids]
        on 7.x; the cursor is followed until ``count`` entries are found or it returns to 0.
        """
        claimed: list[Entry] = []
        cursor: Any = "0-0"
        while len(claimed) < count:
            reply = await self._redis.xautoclaim(
                keys.stream,
                keys.group,
                consumer,
                min_idle_ms,
                start_id=cursor,
                count=count - len(claimed),
            )
            cursor, raw = reply[0], reply[1]
            gone = deleted_ids(raw)
            if gone:
                await self._redis.xack(keys.stream, keys.group, *gone)
            claimed.extend(parse_entries(raw))
            if cursor in (b"0-0", "0-0"):
                break
        if claimed:
            log.info("%s reclaimed %d idle entries", consumer, len(claimed))
        return claimed
