"""Streaming jobs' chunks in Redis: the worker running a job appends each chunk as its model
yields it (the appends of one partition that come together share one call), and anyone
reads them back, on any replica, while the job runs or after it ended, until its record
expires. A replica is told of a job's new chunks on its own channel once a read for a wait
made it one of the job's watchers; followers on the replica that runs the job are handed
its latest chunks in memory once Redis has them (`watching`: no announcement, no read
back)."""

from __future__ import annotations

import asyncio
import collections
import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from redis.asyncio import Redis

from service.errors import RedisSlow
from service.execution.coalesce import Coalescer
from service.redis.calls import Scripts
from service.redis.calls import outputs as calls
from service.redis.calls.outputs import AppendSettings, Pieces
from service.redis.keys import Keys, Partitions
from service.redis.words import Appended

#: What a chunk stream outlives its last append by (it must never go before its record,
#: written final just after).
_MARGIN_SECONDS = 60
#: The latest chunks of a job that runs here, kept for its followers here.
_KEPT = 64
#: The appends of one partition start at least this far apart (s): under load a call
#: carries many jobs' chunks, for at most this much delay; a chunk after a quiet spell
#: goes at once.
APPEND_SPACING_SECONDS = 0.002


class Recent:
    """The latest chunks (up to _KEPT) a replica appended for a job it runs and follows,
    with their numbers, in order."""

    __slots__ = ("chunks",)

    def __init__(self) -> None:
        self.chunks: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=_KEPT)

    def add(self, first: int, chunks: list[bytes]) -> None:
        if first == 1 or (self.chunks and self.chunks[-1][0] != first - 1):
            self.chunks.clear()  # a rerun starts over; a gap: what is kept must be whole
        self.chunks.extend(enumerate(chunks, first))

    def after(self, number: int) -> list[tuple[int, bytes]] | None:
        """The chunks numbered after ``number``, or None when some of them are not kept
        (then Redis has them)."""
        if not self.chunks or number < self.chunks[0][0] - 1:
            return None
        return [item for item in self.chunks if item[0] > number]


class Appender:
    """The appends of one running job. Each chunk goes to its partition's coalescer at once,
    without waiting for the previous one to land (a fast model is not held to a chunk per
    round trip; the coalescer keeps them in order); at most `IN_FLIGHT` are under way, the
    next one waits. `add` and `landed` answer False once an append said stop."""

    IN_FLIGHT = 16

    def __init__(
        self, coalescer: Coalescer[tuple[str, int, bytes], Appended], prediction_id: str
    ) -> None:
        self._coalescer = coalescer
        self._prediction_id = prediction_id
        self._in_flight: collections.deque[asyncio.Future[Appended]] = collections.deque()

    async def add(self, number: int, chunk: bytes) -> bool:
        """Appends chunk ``number``; False when the job is to stop (a DELETE asked it, or
        it is no longer running)."""
        in_flight = self._in_flight
        in_flight.append(self._coalescer.add((self._prediction_id, number, chunk)))
        while in_flight and (in_flight[0].done() or len(in_flight) > self.IN_FLIGHT):
            if await in_flight.popleft() is not Appended.GO:
                return False
        return True

    async def landed(self) -> bool:
        """Waits for the appends under way: False if one said stop."""
        go = True
        while self._in_flight:
            go = await self._in_flight.popleft() is Appended.GO and go
        return go

    def drop(self) -> None:
        """Forgets the appends under way (the job failed): their answers are not awaited."""
        for future in self._in_flight:
            if not future.cancel() and not future.cancelled():
                future.exception()  # seen: not reported as never retrieved
        self._in_flight.clear()


@dataclass(frozen=True, slots=True)
class OutputSettings:
    """Records live ``ttl`` seconds; an 'output' webhook is due at most every
    ``webhook_interval`` seconds; this replica is ``replica``; an append waits for Redis
    at most ``timeout`` seconds (0: no bound)."""

    ttl: int
    webhook_interval: float
    replica: str
    timeout: float = 0.0


class Outputs:
    """The chunks of every partition's streaming jobs."""

    def __init__(
        self, redis: Redis, scripts: Scripts, partitions: Partitions, settings: OutputSettings
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._partitions = partitions
        self._settings = settings
        self._append = AppendSettings(
            settings.ttl + _MARGIN_SECONDS, settings.webhook_interval, settings.replica
        )
        self._watched: dict[str, int] = {}  # followers here, by job
        self._recent: dict[str, Recent] = {}  # of the jobs followed here that run here
        #: Called with a job's id when chunks of a job followed here were appended here.
        self.appended: Callable[[str], None] = lambda prediction_id: None
        self._appends: list[Coalescer[tuple[str, int, bytes], Appended]] = [
            Coalescer(
                functools.partial(self._flush, p),
                settings.timeout,
                RedisSlow,
                APPEND_SPACING_SECONDS,
            )
            for p in partitions.all
        ]

    def appender(self, keys: Keys, prediction_id: str) -> Appender:
        """The appends of a job that runs here (of the partition of ``keys``)."""
        return Appender(self._appends[keys.index], prediction_id)

    async def _flush(self, keys: Keys, items: list[tuple[str, int, bytes]]) -> list[Appended]:
        """One call for the chunks that came together, each job's in order."""
        jobs: dict[str, Pieces] = {}
        for prediction_id, number, chunk in items:
            pieces = jobs.get(prediction_id)
            if pieces is None:
                jobs[prediction_id] = Pieces(prediction_id, number, [chunk])
            else:
                pieces.chunks.append(chunk)
        answers = await calls.append(
            self._scripts, keys, list(jobs.values()), time.time(), self._append
        )
        by_job = dict(zip(jobs, answers, strict=True))
        for prediction_id, pieces in jobs.items():
            if prediction_id in self._watched and by_job[prediction_id] is Appended.GO:
                recent = self._recent.get(prediction_id)
                if recent is None:
                    recent = self._recent[prediction_id] = Recent()
                recent.add(pieces.first, pieces.chunks)
                self.appended(prediction_id)
        return [by_job[prediction_id] for prediction_id, _, _ in items]

    async def read(self, prediction_id: str, after: int) -> list[tuple[int, bytes]]:
        """The job's chunks numbered after ``after``, with their numbers (a page of them):
        from memory when it runs here and they are kept, else from Redis."""
        recent = self._recent.get(prediction_id)
        kept = recent.after(after) if recent is not None else None
        if kept is not None:
            return kept
        return await calls.read(
            self._redis, self._partitions.of(prediction_id), prediction_id, after
        )

    @contextmanager
    def watching(self, prediction_id: str) -> Iterator[None]:
        """While inside, the job's chunks appended here are kept in memory for its
        followers here. (This replica is told of chunks appended elsewhere once a read for
        a wait made it one of the job's watchers: `ResultStore.get(..., watch=True)`.)"""
        self._watched[prediction_id] = self._watched.get(prediction_id, 0) + 1
        try:
            yield
        finally:
            left = self._watched.pop(prediction_id) - 1
            if left:
                self._watched[prediction_id] = left
            else:
                self._recent.pop(prediction_id, None)
