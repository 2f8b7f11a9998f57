"""The job record store: mark processing, finish once, cancel, read. Records expire."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from . import lua
from .coalesce import Coalescer
from .job import Entry, JobRecord
from .keys import Keys
from .models import Outcome


class ResultStore:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        ttl_seconds: int,
        max_deliveries: int = 3,
        job_timeout: float = 0.0,
        *,
        version: tuple[int, ...] = (7,),
    ) -> None:
        self._redis = redis
        self._keys = keys
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

    async def mark_processing(self, jobs: Sequence[tuple[str, bytes]], now: float) -> list[bytes]:
        """Moves each (prediction id, entry id) on in one round trip: processing, or failed
        for a deadline passed or too many deliveries. Answers each job's previous status,
        b"expired" or b"dead" (b"" when its record is gone). See RUNNABLE.
        """
        keys = [self._keys.dead_letters] + [self._keys.record(p) for p, _ in jobs]
        args: list[Any] = [
            repr(now),
            self._ttl,
            self._max_deliveries,
            self._job_timeout,
            self._keys.completions,
            self._keys.started,
        ]
        args.extend(entry_id for _, entry_id in jobs)
        return await self._mark(keys=keys, args=args)

    async def finish_and_ack(
        self,
        finished: Sequence[tuple[Entry, Outcome]],
        entry_ids: Sequence[bytes],
        now: float,
        wanted: Sequence[bool] = (),
    ) -> list[JobRecord | None]:
        """Writes the final records of ``finished`` once and acks ``entry_ids``: one call.
        Answers the records of the jobs ``wanted`` flags (None for the others); one that
        this call ended is built from what the worker holds, not read back."""
        keys = [self._keys.stream, self._keys.webhooks]
        args: list[Any] = [
            self._keys.group,
            repr(now),
            self._ttl,
            self._keys.completions,
            "".join("1" if w else "0" for w in wanted) if any(wanted) else "",
        ]
        for entry, outcome in finished:
            keys.append(self._keys.record(entry.prediction_id))
            args.append(b"R" + outcome.payload if outcome.ok else "E" + outcome.error)
        args.extend(entry_ids)
        replies = await self._finish(keys=keys, args=args)
        if not any(wanted):
            return [None] * len(finished)
        return [
            JobRecord.just_ended(e, o, now, flat)
            for (e, o), flat in zip(finished, replies, strict=True)
        ]

    async def cancel(self, prediction_id: str, now: float) -> tuple[str, JobRecord | None]:
        """Cancels the job if it is still queued; answers the status it had ('' if none)
        and the record as it is now, in one round trip."""
        before, flat = await self._cancel(
            keys=[self._keys.record(prediction_id)], args=[repr(now), self._keys.completions]
        )
        return before.decode(), JobRecord.from_flat(prediction_id, flat)

    async def get(self, prediction_id: str) -> JobRecord | None:
        """The job's record (None when unknown or expired)."""
        return await self._reads.add(prediction_id)

    async def _get_many(self, prediction_ids: list[str]) -> list[JobRecord | None]:
        replies = await self._read(keys=[self._keys.record(p) for p in prediction_ids])
        return [
            JobRecord.from_flat(p, flat) for p, flat in zip(prediction_ids, replies, strict=True)
        ]
