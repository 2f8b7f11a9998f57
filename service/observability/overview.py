"""What the dashboard shows, read from Redis (so every replica shows the same): the queue
now (backlog by priority, tenant and model, the oldest job's age), the activity buckets
(rates, queue wait and run time, the hour's charts), the replicas alive, and the latest
jobs that ended. ``scope`` is whose figures: None for all, else one tenant's ("" the
default tenant's).

Each read is a bounded number of commands: a few per stream of the scope, one per bucket
asked for (at most an hour's), one per list; never one per job.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from redis.asyncio import Redis

from service.observability.activity import (
    ALIVE_SECONDS,
    BINS,
    BUCKET_SECONDS,
    ENDINGS,
    FORGOTTEN_SECONDS,
)
from service.redis.calls import Scripts, text
from service.redis.calls.views import Listed, peek
from service.redis.keys import PRIORITIES, Keys, Names, Partitions

#: The hour the charts show, in buckets.
HOUR_BUCKETS = 3600 // BUCKET_SECONDS
#: Rates are over the last minute; latency quantiles over the last five.
RATE_SECONDS = 60
LATENCY_SECONDS = 300
#: Every field a tenant may have in a bucket (without its tenant).
_WHATS = ["sub", *ENDINGS] + [f"{kind}{i}" for kind in "wr" for i in range(len(BINS) + 1)]
#: Of each tenant's list, the whole view reads this many.
ALL_READ = 200
#: At most this many jobs listed per page.
MOST_LISTED = 100


def _streams(partitions: Partitions, partition: Keys, scope: str | None) -> list[Keys]:
    """The streams of ``partition`` the scope sees: every tenant's, or one tenant's."""
    if scope is None:
        return partitions.streams(partition)
    return list(partition.of_tenant(scope).priorities)


def _born(entry_id: str) -> float:
    return int(entry_id.split("-")[0]) / 1000


async def queue_now(
    redis: Redis, scripts: Scripts, partitions: Partitions, scope: str | None
) -> dict[str, Any]:
    """Jobs queued and running: in all, by priority, by tenant (all scope), by model (all
    scope: the backlog hash counts every tenant's), and the oldest queued one's age in
    seconds. One peek per partition (no job's input is read), and the backlog hashes."""
    per_partition = [_streams(partitions, p, scope) for p in partitions.all]
    peeks = await asyncio.gather(
        *(
            peek(scripts, [k.stream for k in mine], partitions.names.group, 0)
            for mine in per_partition
        )
    )
    by_model: dict[str, int] = {}
    if scope is None:
        pipe = redis.pipeline(transaction=False)
        for partition in partitions.all:
            pipe.hgetall(partition.backlog)
        for counts in await pipe.execute():
            for name, count in counts.items():
                by_model[text(name)] = by_model.get(text(name), 0) + max(0, int(count))
    by_priority = dict.fromkeys(PRIORITIES, 0)
    by_tenant: dict[str, int] = {}
    running = oldest = 0.0
    now = time.time()
    for mine, peeked in zip(per_partition, peeks, strict=True):
        for keys, stream in zip(mine, peeked, strict=True):
            by_priority[keys.priority] += stream.length
            by_tenant[keys.tenant] = by_tenant.get(keys.tenant, 0) + stream.length
            running += stream.pending
            if stream.oldest_queued:
                oldest = max(oldest, now - _born(stream.oldest_queued))
    total = sum(by_priority.values())
    answer: dict[str, Any] = {
        "total": total,
        "running": int(running),
        "queued": total - int(running),
        "by_priority": by_priority,
        "oldest_seconds": round(oldest, 3),
    }
    if scope is None:
        answer["by_tenant"] = {t or "default": n for t, n in sorted(by_tenant.items())}
        answer["by_model"] = dict(sorted(by_model.items()))
    return answer


async def buckets(
    redis: Redis, names: Names, since: float, scope: str | None
) -> list[tuple[int, dict[str, int]]]:
    """The activity buckets from ``since`` (at most an hour ago) to now, oldest first, each
    as (its start, what/what counted), summed over the scope's tenants."""
    now = time.time()
    last = int(now) // BUCKET_SECONDS * BUCKET_SECONDS
    first = max(
        int(since) // BUCKET_SECONDS * BUCKET_SECONDS, last - (HOUR_BUCKETS - 1) * BUCKET_SECONDS
    )
    starts = list(range(first, last + 1, BUCKET_SECONDS))
    # A tenant's view reads that tenant's fields alone, whatever the number of tenants.
    whats = _WHATS if scope is not None else []
    pipe = redis.pipeline(transaction=False)
    for start in starts:
        if scope is None:
            pipe.hgetall(names.activity(start))
        else:
            pipe.hmget(names.activity(start), [f"{scope}|{what}" for what in whats])
    out = []
    for start, raw in zip(starts, await pipe.execute(), strict=True):
        counts: dict[str, int] = {}
        if scope is None:
            for field, value in raw.items():
                what = text(field).rpartition("|")[2]
                counts[what] = counts.get(what, 0) + int(value)
        else:
            counts = {what: int(value) for what, value in zip(whats, raw, strict=True) if value}
        out.append((start, counts))
    return out


def quantile(counts: dict[str, int], prefix: str, q: float) -> float | None:
    """The ``q`` quantile (seconds) of the wait ('w') or run ('r') bins in ``counts``,
    placed within its bin as if the bin's values were spread evenly (None: nothing
    counted; past the last bound, that bound)."""
    bins = [counts.get(f"{prefix}{i}", 0) for i in range(len(BINS) + 1)]
    total = sum(bins)
    if not total:
        return None
    rank, seen = q * total, 0
    for i, count in enumerate(bins):
        if count and seen + count >= rank:
            if i == len(BINS):
                return float(BINS[-1])
            low = BINS[i - 1] if i else 0.0
            return round(low + (BINS[i] - low) * (rank - seen) / count, 6)
        seen += count
    return float(BINS[-1])


def point(start: int, counts: dict[str, int], now: float) -> dict[str, Any]:
    """One bucket for the charts: jobs per second over the seconds it covers so far (all
    ten, but for the current one), and p50/p99 wait and run time."""
    seconds = max(1.0, min(float(BUCKET_SECONDS), now - start))
    return {
        "t": start,
        "seconds": seconds,
        "submitted": counts.get("sub", 0) / seconds,
        **{ending: counts.get(ending, 0) / seconds for ending in ENDINGS},
        "wait_p50": quantile(counts, "w", 0.5),
        "wait_p99": quantile(counts, "w", 0.99),
        "run_p50": quantile(counts, "r", 0.5),
        "run_p99": quantile(counts, "r", 0.99),
    }


def summary(series: list[tuple[int, dict[str, int]]]) -> dict[str, Any]:
    """Rates over the last minute (jobs per second) and p50/p99 queue wait and run time
    over the last five, from buckets that reach back that far."""
    now = time.time()
    recent: dict[str, int] = {}
    latency: dict[str, int] = {}
    for start, counts in series:
        target = []
        if start > now - RATE_SECONDS - BUCKET_SECONDS:
            target.append(recent)
        if start > now - LATENCY_SECONDS - BUCKET_SECONDS:
            target.append(latency)
        for into in target:
            for what, count in counts.items():
                into[what] = into.get(what, 0) + count
    first = min((s for s, _ in series if s > now - RATE_SECONDS - BUCKET_SECONDS), default=now)
    seconds = max(1.0, now - first)
    return {
        "rates": {
            "submitted": round(recent.get("sub", 0) / seconds, 3),
            **{e: round(recent.get(e, 0) / seconds, 3) for e in ENDINGS},
        },
        "latency": {
            "wait_p50": quantile(latency, "w", 0.5),
            "wait_p99": quantile(latency, "w", 0.99),
            "run_p50": quantile(latency, "r", 0.5),
            "run_p99": quantile(latency, "r", 0.99),
        },
    }


async def replicas(redis: Redis, names: Names) -> list[dict[str, Any]]:
    """The replicas heard from lately, with their workers and models; those not heard from
    for a day are forgotten."""
    now = time.time()
    alive, forgotten = [], []
    for name, raw in (await redis.hgetall(names.replicas)).items():
        about = orjson.loads(raw)
        at = float(about.get("at", 0))
        if at > now - ALIVE_SECONDS:
            alive.append({"name": text(name), **about, "seen_seconds_ago": round(now - at, 1)})
        elif at < now - FORGOTTEN_SECONDS:
            forgotten.append(name)
    if forgotten:
        await redis.hdel(names.replicas, *forgotten)
    return sorted(alive, key=lambda r: r["name"])


async def ended_jobs(
    redis: Redis,
    partitions: Partitions,
    scope: str | None,
    status: str = "",
    model: str = "",
    most: int = MOST_LISTED,
) -> list[dict[str, Any]]:
    """The latest jobs that ended, newest first, of the scope, with ``status`` and
    ``model`` when given (failures come from their own lists: kept longer). A tenant's
    view reads its own list; the whole view, every tenant's, the first ALL_READ of each."""
    names = partitions.names
    name = names.failures if status == "failed" else names.ended
    tenants = list(partitions.tenants) if scope is None else [scope]
    pipe = redis.pipeline(transaction=False)
    for tenant in tenants:
        pipe.lrange(name(tenant), 0, -1 if scope is not None else ALL_READ - 1)
    jobs = [orjson.loads(raw) for listed in await pipe.execute() for raw in listed]
    jobs.sort(key=lambda job: job["at"], reverse=True)
    out = []
    for job in jobs:
        if (status and job["status"] != status) or (model and job["model"] != model):
            continue
        out.append(job)
        if len(out) >= most:
            break
    return out


async def waiting_jobs(
    scripts: Scripts,
    partitions: Partitions,
    scope: str | None,
    status: str,
    model: str = "",
    most: int = MOST_LISTED,
) -> list[dict[str, Any]]:
    """The oldest jobs of the scope that are ``status`` ('queued' or 'processing'), as
    the streams hold them (no record read, no input)."""
    found: list[tuple[Keys, Listed]] = []
    for partition in partitions.all:
        mine = _streams(partitions, partition, scope)
        peeked = await peek(scripts, [k.stream for k in mine], partitions.names.group, most)
        for keys, stream in zip(mine, peeked, strict=True):
            jobs = stream.queued if status == "queued" else stream.running
            found += [(keys, job) for job in jobs if not model or job.model == model]
    found.sort(key=lambda f: _born(f[1].entry_id))
    return [
        {
            "id": job.prediction_id,
            "model": job.model,
            "tenant": keys.tenant,
            "priority": keys.priority,
            "status": status,
            "at": _born(job.entry_id),
            "mode": "async",
        }
        for keys, job in found[:most]
    ]


async def tenant_rates(redis: Redis, names: Names) -> dict[str, float]:
    """Jobs submitted per second over the last minute, by tenant."""
    now = time.time()
    last = int(now) // BUCKET_SECONDS * BUCKET_SECONDS
    starts = range(last - RATE_SECONDS, last + 1, BUCKET_SECONDS)
    pipe = redis.pipeline(transaction=False)
    for start in starts:
        pipe.hgetall(names.activity(start))
    submitted: dict[str, int] = {}
    for raw in await pipe.execute():
        for field, value in raw.items():
            tenant, _, what = text(field).rpartition("|")
            if what == "sub":
                submitted[tenant] = submitted.get(tenant, 0) + int(value)
    seconds = now - starts[0]
    return {tenant: round(count / seconds, 3) for tenant, count in submitted.items()}
