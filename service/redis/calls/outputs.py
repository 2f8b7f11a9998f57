"""The calls of streaming jobs' chunks: append.lua, and their reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from service.redis.calls import Scripts
from service.redis.keys import Keys
from service.redis.words import Appended

_WORDS = {a.value.encode(): a for a in Appended}


@dataclass(frozen=True, slots=True)
class Pieces:
    """Chunks of one job to append: the number of the first, then the chunks (JSON)."""

    prediction_id: str
    first: int
    chunks: list[bytes]


@dataclass(frozen=True, slots=True)
class AppendSettings:
    """The chunks live ``ttl`` seconds after their last append (the record's TTL, and a
    little more, so they never go before it); an 'output' webhook is due at most every
    ``webhook_interval`` seconds (STREAM_WEBHOOK_INTERVAL_SECONDS); the appending
    ``replica`` is not told (it tells its own followers)."""

    ttl: int
    webhook_interval: float
    replica: str = ""


async def append(
    scripts: Scripts, keys: Keys, jobs: Sequence[Pieces], now: float, settings: AppendSettings
) -> list[Appended]:
    """Adds the chunks of jobs of one partition, tells the other replicas that follow them,
    and queues 'output' webhooks that are due: one call. Per job: go on, or stop."""
    names: list[Any] = [keys.webhooks]
    args: list[Any] = [
        repr(now),
        settings.ttl,
        keys.publish,
        keys.to_replica(""),
        repr(settings.webhook_interval),
        settings.replica,
    ]
    for job in jobs:
        names += (keys.record(job.prediction_id), keys.chunks(job.prediction_id))
        args += (job.first, len(job.chunks), *job.chunks)
    reply = await scripts.run("append", names, args)
    return [_WORDS[word] for word in reply]


async def read(
    redis: Redis, keys: Keys, prediction_id: str, after: int, count: int = 200
) -> list[tuple[int, bytes]]:
    """A job's chunks numbered after ``after`` (up to ``count``), with their numbers."""
    reply: Any = await redis.xrange(keys.chunks(prediction_id), f"(0-{after}", "+", count)
    return [(int(entry_id.split(b"-")[1]), fields[b"c"]) for entry_id, fields in reply]
