"""The work queue: Redis Streams (per partition one for each priority) read through
consumer groups."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from service.errors import IdempotencyConflict, QueueFull, RedisSlow
from service.execution.coalesce import Coalescer
from service.job import Entry, NewJob
from service.jobs.reads import Reader
from service.redis import lua
from service.redis.durable import Durable
from service.redis.keys import PRIORITIES, Keys, Partitions

log = logging.getLogger(__name__)


class Lane(Protocol):
    """Where the jobs that a submit delivered straight to this replica go (the direct
    lane, `service.jobs.lane`): submit.lua started them and delivered them to ``consumer`` in
    the group of their partition (``keys``)."""

    consumer: str

    def has_room(self) -> bool: ...

    def take(self, keys: Keys, entries: list[Entry]) -> None: ...


class JobQueue:
    """Submits jobs (concurrent submits coalesced: one script call per partition), makes
    the workers' readers (`service.jobs.reads`), keeps long jobs claimed. With a ``lane``, a
    submit holding a job someone here waits for may be delivered straight to this replica.

    ``max_queue`` bounds each partition's streams (MAX_QUEUE divided among partitions); a
    tenant with a quota (``quotas``, its max_queued) is bounded by that instead, counted on
    its own streams."""

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
        timeout: float = 0.0,
    ) -> None:
        self._redis = redis
        self.version = version
        self._durable = durable
        self.partitions = partitions
        self._ttl = ttl_seconds
        self._max_queue = max_queue
        self._lane = lane
        self._submit_script = lua.register(redis, "submit", version)
        self._hand_back = lua.register(redis, "hand_back", version)
        self._retire = lua.register(redis, "retire", version)
        self._take = lua.register(redis, "take", version)
        # One coalescer per partition: a partition whose node is slow (or stopped) holds up
        # only its own submits, and answers them 503 after ``timeout`` seconds.
        self._timeout = timeout
        self._submits: list[Coalescer[NewJob, str]] = [
            Coalescer(functools.partial(self._write_partition, p), timeout, RedisSlow)
            for p in partitions.all
        ]
        #: Each tenant's max_queued, for those that have one.
        self.quotas: dict[str, int] = {}

    async def add_tenants(self, weights: dict[str, int], quotas: dict[str, int]) -> None:
        """Makes the streams and groups of these tenants (if new), then reads them too, and
        bounds each tenant's queued jobs by its quota (0: by MAX_QUEUE)."""
        grown = {**self.partitions.tenants, **weights}
        await self._ensure_groups(
            [k for p in self.partitions.all for t in grown for k in p.of_tenant(t).priorities]
        )
        if weights:
            await self._redis.sadd(self.partitions.registry, *weights)
        self.quotas = {name: q for name, q in quotas.items() if q > 0}
        self.partitions.add_tenants(weights)

    def _limit_of(self, tenant: str) -> tuple[int, int]:
        """(the bound on one partition's streams of ``tenant``, the bound in all)."""
        total = self.quotas.get(tenant, self._max_queue) if tenant else self._max_queue
        if total <= 0:
            return 0, 0
        return max(1, -(-total // len(self.partitions))), total

    async def ensure_group(self) -> None:
        """Creates every partition's streams and groups if missing; from id 0 so no queued
        job is skipped. Every tenant that ever had streams is read (with weight 1 until
        the keys file names it): one taken out of the file keeps its queued jobs run."""
        known = {_text(name) for name in await self._redis.smembers(self.partitions.registry)}
        self.partitions.add_tenants(
            {name: 1 for name in known if name not in self.partitions.tenants}
        )
        await self._ensure_groups(
            [k for p in self.partitions.all for k in self.partitions.streams(p)]
        )

    async def _ensure_groups(self, streams: list[Keys]) -> None:
        for keys in streams:
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
        reply = await self._submits[self.partitions.of(job.prediction_id).index].add(job)
        if reply == "ok":
            return job.prediction_id
        if reply.startswith("dup:"):
            return reply.removeprefix("dup:")
        if reply == "full":
            raise self._full(job.tenant, 1)
        raise IdempotencyConflict("This Idempotency-Key was used with a different request body.")

    async def submit_all(self, jobs: list[NewJob]) -> list[str]:
        """Queues every job, or none when they do not all fit under MAX_QUEUE (QueueFull):
        one script call, one round trip. Answers the prediction ids in order (the earlier
        ids when the jobs carry idempotency keys used before for the same body)."""
        partition = self.partitions.of(jobs[0].prediction_id)
        if any(self.partitions.of(job.prediction_id) is not partition for job in jobs):
            raise ValueError("a bulk submit's jobs must share one partition")
        if any(j.priority != jobs[0].priority or j.tenant != jobs[0].tenant for j in jobs):
            raise ValueError("a bulk submit's jobs must share one priority and tenant")
        try:
            async with asyncio.timeout(self._timeout or None):
                replies = await self._write(partition, jobs, whole=True)
        except TimeoutError:
            raise RedisSlow() from None
        if any(r == "full" for r in replies):
            raise self._full(jobs[0].tenant, len(jobs))
        if any(r == "conflict" for r in replies):
            raise IdempotencyConflict(
                "This Idempotency-Key was used with a different request body."
            )
        return [
            r.removeprefix("dup:") if r.startswith("dup:") else job.prediction_id
            for job, r in zip(jobs, replies, strict=True)
        ]

    def _full(self, tenant: str, count: int) -> QueueFull:
        if tenant not in self.quotas:
            if count == 1:
                return QueueFull(f"The queue holds {self._max_queue} jobs; try again shortly.")
            return QueueFull(f"The queue cannot take {count} more jobs; try again shortly.")
        per_partition, total = self._limit_of(tenant)
        whose = f"Tenant {tenant!r} may have {total} jobs queued"
        if len(self.partitions) > 1:
            whose += f" ({per_partition} in each of {len(self.partitions)} partitions)"
        more = "this job" if count == 1 else f"{count} more jobs"
        return QueueFull(f"{whose}; there is no room for {more} now: try again shortly.")

    async def _write_partition(self, partition: Keys, jobs: list[NewJob]) -> list[str]:
        """One flush of coalesced submits of one partition: one script call per tenant and
        priority they hold."""
        if all(j.priority == "normal" and not j.tenant for j in jobs):
            return await self._write(partition, jobs)
        groups: dict[tuple[str, str], list[int]] = {}
        for position, job in enumerate(jobs):
            groups.setdefault((job.tenant, job.priority), []).append(position)
        answers = await asyncio.gather(
            *(self._write(partition, [jobs[i] for i in at]) for at in groups.values())
        )
        out = [""] * len(jobs)
        for at, replies in zip(groups.values(), answers, strict=True):
            for position, reply in zip(at, replies, strict=True):
                out[position] = reply
        return out

    async def _write(self, partition: Keys, jobs: list[NewJob], whole: bool = False) -> list[str]:
        """Queues ``jobs``, all of one partition, tenant and priority: one script call."""
        priority, tenant = jobs[0].priority, jobs[0].tenant
        streams = partition.of_tenant(tenant).priorities
        chosen = streams[PRIORITIES.index(priority)]
        partition = chosen  # the direct lane acks on the stream the jobs are queued on
        keys = [chosen.stream] + [s.stream for s in streams if s is not chosen]
        now = time.time()
        args: list[Any] = [
            self._ttl,
            self._limit_of(tenant)[0],
            "1" if whole else "0",
            repr(now),
            "" if priority == "normal" else priority,
            tenant,
        ]
        idempotency: list[str] = []
        for job in jobs:
            keys.append(partition.record(job.prediction_id))
            args += (job.prediction_id, job.model, job.input_json, job.request_id)
            if job.idempotency_key or job.webhook or job.cancel_after or job.traceparent:
                index = 0
                if job.idempotency_key:
                    idempotency.append(partition.idempotency(job.idempotency_key))
                    index = len(jobs) + 3 + len(idempotency)  # its place in KEYS (from 1)
                cancel_at = repr(now + job.cancel_after) if job.cancel_after else ""
                extras = [index, job.body_digest, job.webhook, job.webhook_events, cancel_at]
                if job.traceparent:
                    extras.append(job.traceparent)
                args.append(orjson.dumps(extras))
            else:
                args.append("")
        keys += idempotency
        keys.append(partition.backlog)
        # A flush with a job someone here waits for goes to the lane whole (the others
        # would be run by a worker of some replica just as soon). Not with tenants: the
        # lane sees only the jobs' own tenant's streams, and would overtake the others'.
        lane = self._lane
        if (
            lane is not None
            and not whole
            and not self.partitions.tenanted
            and lane.has_room()
            and any(j.waited for j in jobs)
        ):
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
                    Entry(
                        entry_id,
                        j.prediction_id,
                        j.model,
                        j.input_json,
                        j.request_id,
                        now,
                        now + j.cancel_after if j.cancel_after else 0.0,
                        j.traceparent,
                    )
                    for j, entry_id in zip(jobs, entry_ids, strict=True)
                    if entry_id
                ],
            )
            if isinstance(replies, int):
                return ["ok"] * len(jobs)
        return [r.decode() for r in replies]

    def reader(
        self, partition: Keys, consumer: str, batch_size: int, block_ms: int, visibility_ms: int
    ) -> Reader:
        """The reads of a worker, ``consumer`` of ``partition`` (see `service.jobs.reads`)."""
        return Reader(
            self._redis,
            self._take,
            self.partitions,
            partition,
            consumer,
            batch_size=batch_size,
            block_ms=block_ms,
            visibility_ms=visibility_ms,
        )

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
        """Deletes these consumers (a stopping replica's) from every stream's group where
        they hold nothing pending (see retire.lua)."""
        if consumers:
            await asyncio.gather(
                *(
                    self._retire(keys=[keys.stream], args=[keys.group, *consumers])
                    for partition in self.partitions.all
                    for keys in self.partitions.streams(partition)
                )
            )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
