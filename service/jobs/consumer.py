"""One consumer's part in a partition's streams, from the read to the ack: what it reads
next (`service.jobs.reads`), the entries it holds and keeps claimed meanwhile (a
heartbeat), and how each ends: finished and acked (finish.lua), or handed back for
another replica (hand_back.lua). A stopping replica's consumers then leave the groups
(`retire`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.job import Entry, JobRecord, Outcome, Status
from service.jobs.reads import Batches, ConsumerSettings, Reader
from service.jobs.streams import Streams
from service.redis.calls import Scripts
from service.redis.calls import queue as calls
from service.redis.calls.records import Ended, finish
from service.redis.keys import Keys, Partitions

log = logging.getLogger(__name__)


class Consumer:
    """``name``'s part in the streams of ``partition``: its reads, what it holds, how each
    entry ends. A consumer that only runs what it is handed (the direct lane) never reads."""

    def __init__(
        self,
        redis: Redis,
        scripts: Scripts,
        streams: Streams,
        partition: Keys,
        name: str,
        settings: ConsumerSettings,
    ) -> None:
        self.name = name
        self.partition = partition
        self.settings = settings
        self._scripts = scripts
        self._streams = streams
        self._held = Held(redis, name, settings.visibility_ms / 3000)
        self._reader = Reader(
            redis, scripts, streams.partitions, partition, name, settings, self._held.holds
        )

    async def next(self, most: int = 0) -> Batches:
        """The next entries to run (at most ``most``, a batch when 0), a list per stream
        (see `Reader.next`); each is held."""
        batches = await self._reader.next(most)
        for keys, entries in batches:
            self._held.hold(keys, entries)
        return batches

    def restart(self) -> None:
        """Reads this consumer's own pending entries first again."""
        self._reader.restart()

    async def ensure_streams(self) -> None:
        """Makes the streams and groups again (one was deleted, or lost in a failover)."""
        await self._streams.ensure()

    def hold(self, keys: Keys, entries: list[Entry]) -> None:
        """Keeps ``entries`` claimed until `release` (the lane's batches, delivered to it)."""
        self._held.hold(keys, entries)

    def release(self, keys: Keys, entries: list[Entry]) -> None:
        self._held.release(keys, entries)

    async def hand_back(self, keys: Keys, entries: Sequence[Entry]) -> int:
        """Puts ``entries`` back on their stream for any replica to read at once (this
        replica stops before they end); answers how many went back."""
        return await calls.hand_back(self._scripts, keys, self.name, entries)

    async def finish(
        self,
        keys: Keys,
        finished: Sequence[tuple[Entry, Outcome]],
        acked: Sequence[Entry],
        now: float,
        wanted: Sequence[bool] = (),
    ) -> list[JobRecord | None]:
        """Writes the final records of ``finished`` once and acks ``acked``: one call.
        Answers the records of the jobs ``wanted`` flags (None for the others); one that
        this call ended is built from what the worker holds, not read back."""
        ttl = self.settings.ttl
        ended = await finish(self._scripts, keys, finished, acked, now, ttl, wanted)
        if not any(wanted):
            return [None] * len(finished)
        return [
            _record(entry, outcome, now, answer, keys.tenant)
            for (entry, outcome), answer in zip(finished, ended, strict=True)
        ]


def _record(
    entry: Entry, outcome: Outcome, now: float, answer: Ended | None, tenant: str
) -> JobRecord | None:
    """The record finish.lua answered for one job: read back whole, or written by that
    call, so that all but four fields are what the worker sent it (half the cost of
    parsing the whole hash, on every Prefer: wait answer) and the tenant whose stream it
    came from."""
    if answer is None:
        return None
    fields = answer.fields
    if not answer.written:
        return JobRecord.from_redis(entry.prediction_id, fields)
    started_at, attempts = fields[b"started_at"], fields[b"attempts"]
    status = Status.DONE if outcome.ok else Status.CANCELED if outcome.canceled else Status.FAILED
    return JobRecord(
        prediction_id=entry.prediction_id,
        status=status,
        model=entry.model,
        input=orjson.loads(entry.input_json),
        created_at=float(fields[b"created_at"]),
        started_at=None if started_at is None else float(started_at),
        finished_at=now,
        attempts=int(attempts or 0),
        result=orjson.loads(outcome.payload) if outcome.ok else None,
        error=None if outcome.ok or outcome.canceled else outcome.error,
        request_id=entry.request_id or None,
        webhook=fields[b"webhook"].decode() if fields[b"webhook"] else None,
        tenant=tenant,
        traceparent=entry.traceparent,
    )


class Held:
    """The entries a consumer holds (read, or delivered by the lane, and not yet finished or
    handed back), by stream, kept claimed by a heartbeat: while anything is held, every
    ``interval`` one XCLAIM per stream (to itself) resets their idle time, so no one
    reclaims an entry that runs or waits for its turn behind the batches read with it. A
    timer, not a task, waits for the first beat: most batches end sooner and cost no claim.
    """

    def __init__(self, redis: Redis, consumer: str, interval: float) -> None:
        self._redis: Any = redis
        self._consumer = consumer
        self._interval = interval
        self._ids: dict[Keys, dict[bytes, int]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._beats: set[asyncio.Task[None]] = set()

    def hold(self, keys: Keys, entries: list[Entry]) -> None:
        held = self._ids.setdefault(keys, {})
        for entry in entries:  # counted: a lane batch is held by the lane and by its run
            held[entry.entry_id] = held.get(entry.entry_id, 0) + 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)

    def holds(self, keys: Keys, entry_id: bytes) -> bool:
        return entry_id in self._ids.get(keys, ())

    def release(self, keys: Keys, entries: list[Entry]) -> None:
        held = self._ids.get(keys)
        if held is None:
            return
        for entry in entries:
            left = held.get(entry.entry_id, 0) - 1
            if left > 0:
                held[entry.entry_id] = left
            else:
                held.pop(entry.entry_id, None)
        if not held:
            del self._ids[keys]
        if not self._ids and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        if not self._ids:
            return
        held = {keys: list(ids) for keys, ids in self._ids.items()}
        beat = asyncio.get_running_loop().create_task(self._heartbeat(held))
        self._beats.add(beat)
        beat.add_done_callback(self._beats.discard)
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)

    async def _heartbeat(self, held: dict[Keys, list[bytes]]) -> None:
        for keys, ids in held.items():
            try:  # XCLAIM to itself, min idle 0: resets the idle time, counts no delivery
                await self._redis.xclaim(
                    keys.stream, keys.group, self._consumer, 0, ids, justid=True
                )
            except RedisError as exc:
                log.warning("%s: heartbeat failed: %s", self._consumer, exc)


async def retire(scripts: Scripts, partitions: Partitions, consumers: Sequence[str]) -> None:
    """Deletes these consumers (a stopping replica's) from every stream's group where they
    hold nothing pending (see retire.lua)."""
    if consumers:
        await asyncio.gather(
            *(
                calls.retire(scripts, keys, consumers)
                for partition in partitions.all
                for keys in partitions.streams(partition)
            )
        )
