"""Submitting jobs: a record and a stream entry each, written together (submit.lua);
concurrent submits share one call per partition, tenant and priority."""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import Protocol

from service.errors import IdempotencyConflict, QueueFull, RedisSlow
from service.execution.coalesce import Coalescer
from service.job import Entry, NewJob
from service.jobs.streams import Streams
from service.observability.activity import Activity
from service.redis.calls import Scripts
from service.redis.calls.queue import Answer, Lane, SubmitReply, submit
from service.redis.durable import Durable
from service.redis.keys import PRIORITIES, Keys
from service.redis.words import Submitted

_CONFLICT = "This Idempotency-Key was used with a different request body."


class DirectLane(Protocol):
    """Where the jobs that a submit delivered straight to this replica go (the direct
    lane, `service.jobs.lane`): submit.lua started them and delivered them to ``consumer``
    in the group of their stream (``keys``)."""

    consumer: str

    def has_room(self) -> bool: ...

    def deliver(self, keys: Keys, entries: list[Entry]) -> None: ...


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """Records live ``ttl`` seconds (RESULT_TTL_SECONDS); at most ``max_queue`` jobs wait
    (0: no bound); a submit waits for Redis at most ``timeout`` seconds (0: no bound);
    this replica is ``replica`` (told when a job someone here waits for starts or ends)."""

    ttl: int
    max_queue: int = 0
    timeout: float = 0.0
    replica: str = ""


class JobQueue:
    """Submits jobs to the ``streams``: concurrent submits share one script call per
    partition (a partition whose node is slow holds up only its own). With a ``lane``, a
    submit holding a job someone here waits for may be delivered straight to this replica;
    with ``durable``, a submit is answered once a Redis replica has it.

    MAX_QUEUE bounds each partition's streams (divided among the partitions); a tenant
    with a quota (``quotas``, its max_queued) is bounded by that instead, counted on its
    own streams."""

    def __init__(
        self,
        scripts: Scripts,
        streams: Streams,
        settings: QueueSettings,
        *,
        lane: DirectLane | None = None,
        durable: Durable | None = None,
        activity: Activity | None = None,
    ) -> None:
        self._scripts = scripts
        #: Where jobs queued are counted for the dashboard (None: not counted).
        self._activity = activity
        self.streams = streams
        self.partitions = streams.partitions
        self._settings = settings
        self._lane = lane
        self._durable = durable
        self._submits: list[Coalescer[NewJob, Answer]] = [
            Coalescer(functools.partial(self._write_partition, p), settings.timeout, RedisSlow)
            for p in self.partitions.all
        ]
        #: Each tenant's max_queued, for those that have one.
        self.quotas: dict[str, int] = {}

    async def add_tenants(self, weights: dict[str, int], quotas: dict[str, int]) -> None:
        """Makes the streams and groups of these tenants (if new), then reads them too, and
        bounds each tenant's queued jobs by its quota (0: by MAX_QUEUE)."""
        await self.streams.add_tenants(weights)
        self.quotas = {name: q for name, q in quotas.items() if q > 0}

    def _limit_of(self, tenant: str) -> tuple[int, int]:
        """(the bound on one partition's streams of ``tenant``, the bound in all)."""
        most = self._settings.max_queue
        total = self.quotas.get(tenant, most) if tenant else most
        if total <= 0:
            return 0, 0
        return max(1, -(-total // len(self.partitions))), total

    async def submit(self, job: NewJob) -> str:
        """Writes the record and queues the job; answers the prediction id once both are in
        Redis (an earlier job's id for a repeated idempotency key). QueueFull (429) when
        MAX_QUEUE jobs wait; IdempotencyConflict (409) for a reused key with another body.

        Submits of concurrent requests share one script call (one round trip, atomic), so
        each job's record and stream entry are written together, and a busy server makes
        few round trips.
        """
        answer = await self._submits[self.partitions.of(job.prediction_id).index].add(job)
        if answer.word is Submitted.OK:
            if self._activity is not None:
                self._activity.submitted(job.tenant)
            return job.prediction_id
        if answer.word is Submitted.DUP:
            return answer.earlier
        if answer.word is Submitted.FULL:
            raise self._full(job.tenant, 1)
        raise IdempotencyConflict(_CONFLICT)

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
            async with asyncio.timeout(self._settings.timeout or None):
                answers = await self._write(partition, jobs, whole=True)
        except TimeoutError:
            raise RedisSlow() from None
        words = {a.word for a in answers}
        if Submitted.FULL in words:
            raise self._full(jobs[0].tenant, len(jobs))
        if Submitted.CONFLICT in words:
            raise IdempotencyConflict(_CONFLICT)
        if self._activity is not None:
            new = sum(a.word is Submitted.OK for a in answers)
            self._activity.submitted(jobs[0].tenant, new)
        return [a.earlier or job.prediction_id for job, a in zip(jobs, answers, strict=True)]

    def _full(self, tenant: str, count: int) -> QueueFull:
        if tenant not in self.quotas:
            if count == 1:
                return QueueFull(
                    f"The queue holds {self._settings.max_queue} jobs; try again shortly."
                )
            return QueueFull(f"The queue cannot take {count} more jobs; try again shortly.")
        per_partition, total = self._limit_of(tenant)
        whose = f"Tenant {tenant!r} may have {total} jobs queued"
        if len(self.partitions) > 1:
            whose += f" ({per_partition} in each of {len(self.partitions)} partitions)"
        more = "this job" if count == 1 else f"{count} more jobs"
        return QueueFull(f"{whose}; there is no room for {more} now: try again shortly.")

    async def _write_partition(self, partition: Keys, jobs: list[NewJob]) -> list[Answer]:
        """One flush of coalesced submits of one partition: one script call per tenant and
        priority they hold."""
        if all(j.priority == "normal" and not j.tenant for j in jobs):
            return await self._write(partition, jobs)
        groups: dict[tuple[str, str], list[int]] = {}
        for position, job in enumerate(jobs):
            groups.setdefault((job.tenant, job.priority), []).append(position)
        replies = await asyncio.gather(
            *(self._write(partition, [jobs[i] for i in at]) for at in groups.values())
        )
        out: list[Answer] = [Answer(Submitted.OK)] * len(jobs)
        for at, answers in zip(groups.values(), replies, strict=True):
            for position, answer in zip(at, answers, strict=True):
                out[position] = answer
        return out

    async def _write(
        self, partition: Keys, jobs: list[NewJob], whole: bool = False
    ) -> list[Answer]:
        """Queues ``jobs``, all of one partition, tenant and priority: one script call."""
        tenant = jobs[0].tenant
        keys = partition.of_tenant(tenant).priorities[PRIORITIES.index(jobs[0].priority)]
        now = time.time()
        reply = await submit(
            self._scripts,
            keys,
            jobs,
            ttl=self._settings.ttl,
            limit=self._limit_of(tenant)[0],
            now=now,
            whole=whole,
            lane=self._lane_for(keys, jobs, whole),
            via=self._durable.call if self._durable is not None else None,
            watcher=self._settings.replica,
        )
        if reply.delivered is not None and self._lane is not None:
            self._lane.deliver(keys, _delivered(jobs, reply, now))
        return reply.answers

    def _lane_for(self, keys: Keys, jobs: list[NewJob], whole: bool) -> Lane | None:
        """The lane for this call, if it may take it: a flush with a job someone here waits
        for goes to the lane whole (the others would be run by a worker of some replica
        just as soon). Not with tenants: the lane sees only the jobs' own tenant's streams,
        and would overtake the others'."""
        lane = self._lane
        if (
            lane is None
            or whole
            or self.partitions.tenanted
            or not lane.has_room()
            or not any(j.waited for j in jobs)
        ):
            return None
        return Lane(keys.group, lane.consumer, keys.to_replica(""), keys.publish)


def _delivered(jobs: list[NewJob], reply: SubmitReply, now: float) -> list[Entry]:
    """The entries submit.lua delivered to the lane, as a read would give them."""
    assert reply.delivered is not None
    return [
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
        for j, entry_id in zip(jobs, reply.delivered, strict=True)
        if entry_id
    ]
