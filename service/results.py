"""The job record store: mark processing, finish once, cancel, read. Records expire."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from . import lua
from .coalesce import Coalescer
from .job import Entry, JobRecord
from .keys import Keys, Partitions
from .models import Outcome


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
        self._reads: Coalescer[str, JobRecord | None] = Coalescer(self._get_many)

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
            JobRecord.just_ended(e, o, now, flat)
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

    async def get(self, prediction_id: str) -> JobRecord | None:
        """The job's record (None when unknown or expired)."""
        return await self._reads.add(prediction_id)

    async def _get_many(self, prediction_ids: list[str]) -> list[JobRecord | None]:
        """Reads that came together: one script call per partition they fall in."""
        partitions = self._partitions
        if len(partitions) == 1:
            keys = [partitions[0].record(p) for p in prediction_ids]
            replies = await self._read(keys=keys)
        else:
            groups: dict[int, list[int]] = {}
            for position, prediction_id in enumerate(prediction_ids):
                groups.setdefault(partitions.of(prediction_id).index, []).append(position)
            answers = await asyncio.gather(
                *(
                    self._read(keys=[partitions.record(prediction_ids[i]) for i in at])
                    for at in groups.values()
                )
            )
            replies = [None] * len(prediction_ids)
            for at, flats in zip(groups.values(), answers, strict=True):
                for position, flat in zip(at, flats, strict=True):
                    replies[position] = flat
        return [
            JobRecord.from_flat(p, flat) for p, flat in zip(prediction_ids, replies, strict=True)
        ]
