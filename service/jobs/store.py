"""The job records: a batch marked before it runs, a queued job canceled, a sync request's
record kept, and reads. Records expire. (A batch's records are written final by its
consumer, with the ack: `service.jobs.consumer`.)"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import orjson

from service.errors import RedisSlow
from service.execution.coalesce import Coalescer
from service.job import JobRecord, Outcome, Status
from service.redis.calls import Scripts
from service.redis.calls import records as calls
from service.redis.calls.records import Limits
from service.redis.keys import Keys, Partitions
from service.redis.words import Marked


class ResultStore:
    """The records of every partition: a batch's calls go to its partition (``keys``);
    reads and cancels find a job's partition from its id. ``limits``: what mark.lua holds
    a job to, and how long a record lives; a read waits for Redis at most ``timeout``
    seconds (0: no bound); this replica is ``replica`` (a read for a wait makes it one of
    the job's watchers)."""

    def __init__(
        self,
        scripts: Scripts,
        partitions: Partitions,
        limits: Limits,
        timeout: float = 0.0,
        replica: str = "",
    ) -> None:
        self._scripts = scripts
        self._partitions = partitions
        self._limits = limits
        self._replica = replica
        # Reads that come together share a call, one coalescer per partition: a slow node
        # holds up only the reads of its own partitions (503 after ``timeout`` seconds).
        self._reads: list[Coalescer[tuple[str, bool], JobRecord | None]] = [
            Coalescer(functools.partial(self._read_partition, p), timeout, RedisSlow)
            for p in partitions.all
        ]

    async def mark(
        self, keys: Keys, jobs: Sequence[tuple[str, bytes]], now: float
    ) -> list[Status | Marked]:
        """Moves each (prediction id, entry id) of one partition's batch on in one round
        trip: processing, or ended for a deadline passed or too many deliveries. Answers
        each job's status before, or what ended it (see `service.redis.calls.records`)."""
        return await calls.mark(self._scripts, keys, jobs, now, self._limits)

    async def cancel(
        self, prediction_id: str, now: float, tenant: str = "", streaming: Sequence[str] = ()
    ) -> tuple[Status | None, JobRecord | None, bool]:
        """Cancels the job if it is still queued and ``tenant``'s, or asks it to stop if it
        runs and its model is one of ``streaming``; answers the status it had (None if
        none, or another tenant's), the record as it is now, and whether it was asked to
        stop: one round trip."""
        keys = self._partitions.of(prediction_id)
        before, flat, stopping = await calls.cancel(
            self._scripts, keys, prediction_id, now, tenant, streaming
        )
        return before, JobRecord.from_flat(prediction_id, flat), stopping

    async def keep_sync(self, record: JobRecord, events: str, outcome: Outcome) -> None:
        """Writes the final record of a sync request that named a webhook, and its webhook
        delivery when ``events`` name how it ended: one call."""
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
        keys = self._partitions.of(record.prediction_id)
        await calls.keep_sync(
            self._scripts, keys, record.prediction_id, record.status, fields, self._limits.ttl
        )

    async def get(self, prediction_id: str, watch: bool = False) -> JobRecord | None:
        """The job's record (None when unknown or expired). With ``watch`` (a read for a
        wait), this replica is told from then on when the job starts or ends."""
        partition = self._partitions.of(prediction_id).index
        return await self._reads[partition].add((prediction_id, watch))

    async def _read_partition(
        self, keys: Keys, reads: list[tuple[str, bool]]
    ) -> list[JobRecord | None]:
        """Reads of one partition that came together: one script call."""
        ids = [prediction_id for prediction_id, _ in reads]
        watched = [watch for _, watch in reads]
        flats = await calls.read(self._scripts, keys, ids, watched, self._replica)
        return [JobRecord.from_flat(p, flat) for p, flat in zip(ids, flats, strict=True)]
