"""The queue's shape as read from Redis for the metrics: lengths, lag, pending, dead
letters, the backlog by model and the oldest entry's age, one partition at a time."""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from service.redis.keys import Keys, Partitions


async def partition_figures(
    redis: Redis, partitions: Partitions, keys: Keys
) -> tuple[tuple[int, int, int, int], dict[str, int], float, dict[str, int]]:
    """(stream length, lag, pending, dead letters) of its streams (every tenant's three
    priorities) together, the backlog by model, and the age of the oldest entry, of one
    partition; and the stream lengths by tenant."""
    pipe = redis.pipeline(transaction=False)
    streams = partitions.streams(keys)
    for one in streams:
        pipe.xlen(one.stream)
        pipe.xinfo_groups(one.stream)
        pipe.xrange(one.stream, count=1)
    pipe.xlen(keys.dead_letters)
    pipe.hgetall(keys.backlog)
    *per_stream, dead, counts = await pipe.execute(raise_on_error=False)
    for failed in (dead, counts):
        if isinstance(failed, Exception):
            raise failed
    by_model = {_text(k): max(0, int(v)) for k, v in counts.items()}
    length = lag = pending = 0
    age = 0.0
    by_tenant: dict[str, int] = {}
    for at in range(0, len(per_stream), 3):
        size, groups, first = per_stream[at : at + 3]
        if isinstance(groups, Exception):  # no such stream: nothing queued there
            continue
        length += int(size)
        tenant = streams[at // 3].tenant
        by_tenant[tenant] = by_tenant.get(tenant, 0) + int(size)
        if first:
            born = int(_text(first[0][0]).split("-")[0]) / 1000
            age = max(age, time.time() - born)
        group = next((g for g in groups if _text(g["name"]) == keys.group), None)
        if group is None:
            lag += int(size)
            continue
        pending += int(group["pending"])
        behind = group.get("lag")
        if behind is None:
            # Redis 6.2 reports no lag (and 7.x none once entries were deleted): the stream
            # holds only undelivered and unacked entries (acked ones are deleted in the call
            # that acks them), so what is not pending has not been delivered.
            behind = max(0, int(size) - int(group["pending"]))
        lag += int(behind)
    return (length, lag, pending, int(dead)), by_model, age, by_tenant


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
