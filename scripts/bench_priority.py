"""Priorities under a backlog: how long high jobs wait while a flood of normal ones
drains, and how far low ones get meanwhile.

    scripts/bench --priority [--jobs 50000] [--low 1000] [--rate 50] [--out bench-results]

One replica (the instant model, default settings) drains a backlog of --jobs normal jobs
and --low low ones, queued straight into Redis before it starts. While the normal backlog
lasts, a client submits high jobs over HTTP at --rate a second. A job's queue wait is its
record's started_at minus its created_at. Prints the high jobs' wait next to the normal
ones', the low jobs done while the normal backlog lasted, and writes priority.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench import INSTANT, enqueue, progress, server, wait_drained  # noqa: E402
from service.job import NewJob, entry_fields, queued_record  # noqa: E402
from service.redis.embedded import RedisServer  # noqa: E402


def enqueue_low(redis_url: str, count: int) -> list[str]:
    """Queues ``count`` low-priority jobs as submit.lua would, straight into Redis."""
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create("predictions:low", "workers", id="0", mkstream=True)
    ids = [f"low-{i:08d}-0000-4000-8000-000000000000"[:36] for i in range(count)]
    now = repr(time.time())
    pipe = client.pipeline(transaction=False)
    for prediction_id in ids:
        job = NewJob(prediction_id, "default", orjson.dumps("x"))
        key = f"prediction:{prediction_id}"
        pipe.hset(key, mapping={**queued_record(job, now), "priority": "low"})
        pipe.expire(key, 3600)
        pipe.xadd("predictions:low", entry_fields(job, now))
    pipe.execute()
    client.close()
    return ids


async def trickle(
    port: int,
    redis_url: str,
    stream: str,
    rate: float,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> list[str]:
    """Async submits of ``body``, one at a time at ``rate`` a second, until ``stream`` (a
    backlog) is empty; answers their ids."""
    ids: list[str] = []
    watch = redis.asyncio.Redis.from_url(redis_url)
    url = f"http://127.0.0.1:{port}/predict"
    headers = {"Async-Mode": "true", **(headers or {})}
    async with aiohttp.ClientSession() as http:
        next_at = time.monotonic()
        while await watch.xlen(stream):
            async with http.post(url, json=body, headers=headers) as resp:
                assert resp.status == 202, await resp.text()
                ids.append((await resp.json())["prediction_id"])
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await watch.aclose()
    return ids


def waits(client: redis.Redis, ids: list[str]) -> list[float]:
    """Queue wait (ms) of each finished job."""
    pipe = client.pipeline(transaction=False)
    for prediction_id in ids:
        pipe.hmget(f"prediction:{prediction_id}", "created_at", "started_at")
    out = []
    for created, started in pipe.execute():
        if created and started:
            out.append((float(started) - float(created)) * 1000)
    return out


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max_ms": ordered[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000, help="normal jobs in the backlog")
    parser.add_argument("--low", type=int, default=1000, help="low jobs in the backlog")
    parser.add_argument("--rate", type=float, default=50.0, help="high submits a second")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as data:
        redis_server = RedisServer(Path(data))
        url = redis_server.start()
        try:
            progress(f"queueing {args.jobs:,} normal and {args.low:,} low jobs")
            normal = enqueue(url, INSTANT, "x", args.jobs)
            low = enqueue_low(url, args.low)
            with server(url, model=INSTANT) as (port, _):
                started = time.monotonic()
                urgent = {"input": "urgent", "priority": "high"}
                high = asyncio.run(trickle(port, url, "predictions", args.rate, urgent))
                flood_s = time.monotonic() - started
                client = redis.Redis.from_url(url)
                statuses = [client.hget(f"prediction:{p}", "status") for p in low]
                low_done_in_flood = sum(1 for s in statuses if s == b"done")
                wait_drained(url)
                results: dict[str, Any] = {
                    "normal_jobs": args.jobs,
                    "low_jobs": args.low,
                    "high_rate_per_s": args.rate,
                    "flood_s": round(flood_s, 2),
                    "high_wait": summary(waits(client, high)),
                    "normal_wait": summary(waits(client, normal[:: max(1, args.jobs // 2000)])),
                    "low_wait": summary(waits(client, low)),
                    "low_done_during_flood": low_done_in_flood,
                }
                client.close()
        finally:
            redis_server.stop()
    (args.out / "priority.json").write_text(json.dumps(results, indent=2) + "\n")
    h, n, lw = results["high_wait"], results["normal_wait"], results["low_wait"]
    print(
        f"Backlog of {args.jobs:,} normal and {args.low:,} low jobs, drained in "
        f"{results['flood_s']} s by one replica; high jobs submitted at {args.rate:g}/s."
    )
    print("| jobs | count | queue wait p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    for name, row in (("high", h), ("normal (sample)", n), ("low", lw)):
        print(
            f"| {name} | {row['count']:,} | {row['p50_ms']:,.1f} | {row['p99_ms']:,.1f} "
            f"| {row['max_ms']:,.1f} |"
        )
    print(f"Low jobs done while the normal backlog lasted: {low_done_in_flood:,} of {args.low:,}.")


if __name__ == "__main__":
    main()
