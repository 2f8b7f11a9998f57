"""The job record store: mark processing, finish once, cancel, read. Records expire."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import orjson
from redis.asyncio import Redis

from service.errors import RedisSlow
from service.execution.coalesce import Coalescer
from service.job import Entry, JobRecord, Outcome
from service.redis import lua
from service.redis.keys import Keys, Partitions


class ResultStore:
    """The records of every partition: a batch's calls go to its partition (``keys``);
    reads and cancels find a job's partition from its id."""

    def __init__(
        self,
        redis: Redis,
        partitions: Partitions,
        ttl_seconds: int,
        max_deliveries: int = 3,
        job_timeout: float = 0.0,
        *,
        version: tuple[int, ...] = (7,),
        timeout: float = 0.0,
    ) -> None:
        self._redis = redis
        self._partitions = partitions
        self._ttl = ttl_seconds
        self._max_deliveries = max_deliveries
        self._job_timeout = job_timeout
        # Accepted work moves on even while Redis is out of memory (Redis 7; the scripts ask
        # for allow-oom): finishing a job deletes its stream entry, so the queue drains and
        # memory frees, while new submits are refused.
        self._mark = lua.register(redis, "mark", version)
        self._finish = lua.register(redis, "finish", version)
        self._cancel = lua.register(redis, "cancel", version)
        self._read = lua.register(redis, "read", version)
        self._keep_sync = lua.register(redis, "keep_sync", version)
        # Reads that come together share a call, one coalescer per partition: a slow node
        # holds up only the reads of its own partitions (503 after ``timeout`` seconds).
        self._reads: list[Coalescer[str, JobRecord | None]] = [
            Coalescer(functools.partial(self._read_partition, p), timeout, RedisSlow)
            for p in partitions.all
        ]

    async def mark_processing(
        self, partition: Keys, jobs: Sequence[tuple[str, bytes]], now: float
    ) -> list[bytes]:
        """Moves each (prediction id, entry id) of one partition's batch on in one round
        trip: processing, or failed for a deadline passed or too many deliveries. Answers
        each job's previous status, b"expired" or b"dead" (b"" when its record is gone).
        See RUNNABLE.
        """
        keys = [partition.dead_letters, partition.webhooks]
        keys += [partition.record(p) for p, _ in jobs]
        args: list[Any] = [
            repr(now),
            self._ttl,
            self._max_deliveries,
            self._job_timeout,
            partition.completions,
            partition.started,
            partition.publish,
        ]
        args.extend(entry_id for _, entry_id in jobs)
        return await self._mark(keys=keys, args=args)

    async def finish_and_ack(
        self,
        partition: Keys,
        finished: Sequence[tuple[Entry, Outcome]],
        entries: Sequence[Entry],
        now: float,
        wanted: Sequence[bool] = (),
    ) -> list[JobRecord | None]:
        """Writes the final records of ``finished`` once and acks ``entries``: one call.
        Answers the records of the jobs ``wanted`` flags (None for the others); one that
        this call ended is built from what the worker holds, not read back."""
        keys = [partition.stream, partition.webhooks, partition.backlog]
        args: list[Any] = [
            partition.group,
            repr(now),
            self._ttl,
            partition.completions,
            partition.publish,
            "".join("1" if w else "0" for w in wanted) if any(wanted) else "",
        ]
        for entry, outcome in finished:
            keys.append(partition.record(entry.prediction_id))
            if outcome.ok:
                args.append(b"R" + outcome.payload)
            else:
                args.append(("C" if outcome.canceled else "E") + outcome.error)
        for entry in entries:
            args += (entry.entry_id, entry.model)
        replies = await self._finish(keys=keys, args=args)
        if not any(wanted):
            return [None] * len(finished)
        return [
            JobRecord.just_ended(e, o, now, flat, partition.tenant)
            for (e, o), flat in zip(finished, replies, strict=True)
        ]

    async def cancel(
        self, prediction_id: str, now: float, tenant: str = ""
    ) -> tuple[str, JobRecord | None]:
        """Cancels the job if it is still queued and ``tenant``'s; answers the status it had
        ('' if none, or another tenant's) and the record as it is now, in one round trip."""
        partition = self._partitions.of(prediction_id)
        before, flat = await self._cancel(
            keys=[partition.record(prediction_id)],
            args=[repr(now), partition.completions, partition.publish, tenant],
        )
        return before.decode(), JobRecord.from_flat(prediction_id, flat)

    async def keep_sync(self, record: JobRecord, events: str, outcome: Outcome) -> None:
        """Writes the final record of a sync request that named a webhook, and its webhook
        delivery when ``events`` name how it ended: one call."""
        keys = self._partitions.of(record.prediction_id)
        fields: dict[str, Any] = {
            "model": record.model,
            "input": orjson.dumps(record.input),
            "created_at": repr(record.created_at),
            "finished_at": repr(record.finished_at),
            "attempts": record.attempts,
            "result": outcome.payload if outcome.ok else b"null",
            "request_id": record.request_id or "",
            "webhook": record.webhook or "",
            "webhook_events": events,
        }
        if record.started_at is not None:
            fields["started_at"] = repr(record.started_at)
        if record.error:
            fields["error"] = record.error
        if record.tenant:
            fields["tenant"] = record.tenant
        flat = [item for pair in fields.items() for item in pair]
        await self._keep_sync(
            keys=[keys.record(record.prediction_id), keys.webhooks],
            args=[self._ttl, record.status.value, *flat],
        )

    async def get(self, prediction_id: str) -> JobRecord | None:
        """The job's record (None when unknown or expired)."""
        return await self._reads[self._partitions.of(prediction_id).index].add(prediction_id)

    async def _read_partition(
        self, keys: Keys, prediction_ids: list[str]
    ) -> list[JobRecord | None]:
        """Reads of one partition that came together: one script call."""
        replies = await self._read(keys=[keys.record(p) for p in prediction_ids])
        return [
            JobRecord.from_flat(p, flat) for p, flat in zip(prediction_ids, replies, strict=True)
        ]
