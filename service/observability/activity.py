"""What the dashboard draws, counted where it happens and written to Redis a few times a
minute by each replica: jobs submitted and ended, queue wait and run time, per tenant, in
fixed 10-second buckets that expire after an hour; the latest jobs that ended and failed,
in lists of a fixed length; and each replica's word about itself.

Counting costs a job a few dict increments here; Redis sees one pipelined flush per replica
every FLUSH_SECONDS, whatever the rate of jobs, so a plain job pays it no command.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from service.redis.connection import REDIS_FAILURES
from service.redis.keys import Names

log = logging.getLogger(__name__)

#: Each bucket's width and how long buckets are kept (the charts' hour, and a margin).
BUCKET_SECONDS = 10
KEPT_SECONDS = 3600 + 120
#: How often each replica writes what it counted (and says it is alive).
FLUSH_SECONDS = 5.0
#: A replica not heard from for this long is not alive; its word is deleted after a day.
ALIVE_SECONDS = 3 * FLUSH_SECONDS + 5
FORGOTTEN_SECONDS = 86_400
#: The latest ended and failed jobs kept in Redis per tenant (all replicas together).
ENDED_KEPT = 500
FAILED_KEPT = 200
#: The upper bounds of the wait and run time bins (seconds); one more bin above the last.
BINS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200,
)  # fmt: skip
#: What a job can end as (its field in a bucket).
ENDINGS = ("done", "failed", "canceled", "aborted")


@dataclass(frozen=True, slots=True)
class Ended:
    """One job that ended, as the dashboard lists it."""

    prediction_id: str
    model: str
    tenant: str
    status: str
    error: str
    at: float
    mode: str

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.prediction_id,
                "model": self.model,
                "tenant": self.tenant,
                "status": self.status,
                "error": self.error or None,
                "at": self.at,
                "mode": self.mode,
            }
        )


class Activity:
    """One replica's counts since its last flush (the event loop is the only writer)."""

    def __init__(self) -> None:
        #: bucket start -> field ('<tenant>|<what>') -> count.
        self._buckets: dict[int, dict[str, int]] = {}
        # Bounded: past these lengths the oldest go unlisted (the lists keep fewer anyway).
        self._ended: collections.deque[Ended] = collections.deque(maxlen=ENDED_KEPT)
        self._failed: collections.deque[Ended] = collections.deque(maxlen=FAILED_KEPT)

    def _bucket(self, now: float) -> dict[str, int]:
        start = int(now) // BUCKET_SECONDS * BUCKET_SECONDS
        bucket = self._buckets.get(start)
        if bucket is None:
            bucket = self._buckets[start] = {}
        return bucket

    def submitted(self, tenant: str, count: int = 1) -> None:
        """Jobs queued (or a sync call started) for ``tenant``."""
        bucket = self._bucket(time.time())
        field = f"{tenant}|sub"
        bucket[field] = bucket.get(field, 0) + count

    def ended(
        self,
        prediction_id: str,
        model: str,
        tenant: str,
        status: str,
        *,
        mode: str = "async",
        error: str = "",
        waited: float | None = None,
        ran: float | None = None,
    ) -> None:
        """One job (or sync call) that ended as ``status`` (one of ENDINGS), with how long
        it waited in the queue and ran, where known."""
        now = time.time()
        bucket = self._bucket(now)
        for field in (
            f"{tenant}|{status}",
            None if waited is None else f"{tenant}|w{bisect.bisect_left(BINS, waited)}",
            None if ran is None else f"{tenant}|r{bisect.bisect_left(BINS, ran)}",
        ):
            if field is not None:
                bucket[field] = bucket.get(field, 0) + 1
        if mode == "sync" and not prediction_id:
            return  # a sync call with no record: counted, not listed (nothing to look up)
        job = Ended(prediction_id, model, tenant, status, error[:500], now, mode)
        self._ended.append(job)
        if status == "failed":
            self._failed.append(job)

    async def flush(self, redis: Redis, names: Names, replica: str, about: dict[str, Any]) -> None:
        """Writes what was counted since the last flush, and this replica's word about
        itself, in one pipeline; on failure (or cancellation) keeps it all for the next
        flush. (A failure after Redis applied the pipeline counts it twice: rare, and
        an undercount would be worse.)"""
        buckets, ended, failed = self._buckets, list(self._ended), list(self._failed)
        self._buckets = {}
        self._ended.clear()
        self._failed.clear()
        now = time.time()
        pipe = redis.pipeline(transaction=False)
        for start, fields in buckets.items():
            if fields and start > now - KEPT_SECONDS:
                key = names.activity(start)
                for field, count in fields.items():
                    pipe.hincrby(key, field, count)
                pipe.expire(key, int(start + KEPT_SECONDS - now) + 1)
        lists = ((ended, names.ended, ENDED_KEPT), (failed, names.failures, FAILED_KEPT))
        for listed, name, kept in lists:
            by_tenant: dict[str, list[bytes]] = {}
            for job in listed:
                by_tenant.setdefault(job.tenant, []).append(job.to_json())
            for tenant, jobs in by_tenant.items():
                pipe.lpush(name(tenant), *jobs)
                pipe.ltrim(name(tenant), 0, kept - 1)
        pipe.hset(names.replicas, replica, orjson.dumps({**about, "at": now}))
        try:
            await pipe.execute()
        except BaseException:
            self._keep(buckets, ended, failed)
            raise

    def _keep(
        self, buckets: dict[int, dict[str, int]], ended: list[Ended], failed: list[Ended]
    ) -> None:
        """Puts back what a failed flush did not write (counted since stays counted),
        but for buckets past the hour kept: a long outage holds an hour at most."""
        oldest = time.time() - KEPT_SECONDS
        for start, fields in buckets.items():
            if start < oldest:
                continue
            mine = self._buckets.setdefault(start, {})
            for field, count in fields.items():
                mine[field] = mine.get(field, 0) + count
        # The older first: past the bound, the oldest go, not the newest.
        self._ended = collections.deque([*ended, *self._ended], maxlen=ENDED_KEPT)
        self._failed = collections.deque([*failed, *self._failed], maxlen=FAILED_KEPT)

    async def flush_forever(
        self, redis: Redis, names: Names, replica: str, about: dict[str, Any]
    ) -> None:
        """Flushes every FLUSH_SECONDS until canceled; Redis away is logged and retried."""
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush(redis, names, replica, about)
            except REDIS_FAILURES as exc:
                log.debug("activity not written (%s); kept for the next flush", exc)

    async def leave(self, redis: Redis, names: Names, replica: str, within: float) -> None:
        """A last flush, and this replica's word taken back (it stops); given up after
        ``within`` seconds."""
        with contextlib.suppress(*REDIS_FAILURES, TimeoutError):
            async with asyncio.timeout(max(0.1, within)):
                await self.flush(redis, names, replica, {})
                await redis.hdel(names.replicas, replica)
