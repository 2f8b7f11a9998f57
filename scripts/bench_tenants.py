"""Fair share between tenants: how long a quiet tenant's jobs wait while another one
floods the queue.

    scripts/bench --tenants [--jobs 10000] [--rate 100] [--out bench-results]

One replica (the instant model, default settings) drains a backlog of --jobs jobs of
tenant A, queued straight into Redis before it starts (as submit.lua queues them). While
A's backlog lasts, tenant B submits one job at a time over HTTP, --rate a second. A job's
queue wait is its record's started_at minus its created_at. The same is run twice: with a
keys file naming A and B (weight 1 each: their streams are read in turns), and with no
keys file (one queue: B's jobs queue behind A's backlog). Prints B's wait in both and
writes tenants.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench import INSTANT, progress, server  # noqa: E402
from scripts.bench_priority import summary, trickle, waits  # noqa: E402
from service.job import NewJob, entry_fields, queued_record  # noqa: E402
from service.redis.embedded import RedisServer  # noqa: E402


def flood(redis_url: str, stream: str, tenant: str, count: int) -> list[str]:
    """Queues ``count`` jobs of ``tenant`` on ``stream`` as submit.lua would."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.xgroup_create(stream, "workers", id="0", mkstream=True)
    ids = [str(uuid.uuid4()) for _ in range(count)]
    now = repr(time.time())
    for start in range(0, count, 5000):
        pipe = client.pipeline(transaction=False)
        for prediction_id in ids[start : start + 5000]:
            job = NewJob(prediction_id, "default", orjson.dumps("x"))
            key = f"prediction:{prediction_id}"
            record = queued_record(job, now)
            if tenant:
                record["tenant"] = tenant
            pipe.hset(key, mapping=record)
            pipe.expire(key, 3600)
            pipe.xadd(stream, entry_fields(job, now))
        pipe.execute()
    client.close()
    return ids


def drained(client: redis.Redis, ids: list[str], within: float = 600) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pipe = client.pipeline(transaction=False)
        for prediction_id in ids:
            pipe.hget(f"prediction:{prediction_id}", "status")
        if all(s == b"done" for s in pipe.execute()):
            return
        time.sleep(0.05)
    raise RuntimeError(f"jobs not done within {within} s")


def run(redis_url: str, jobs: int, rate: float, keys_file: Path | None) -> dict[str, Any]:
    """One scenario: A's backlog, B's trickle; answers the figures."""
    tenanted = keys_file is not None
    stream = "predictions:t:a" if tenanted else "predictions"
    flood_ids = flood(redis_url, stream, "a" if tenanted else "", jobs)
    env: dict[str, Any] = {"model": INSTANT}
    if tenanted:
        env["api_keys_file"] = keys_file
    else:
        env["api_key"] = "b-key"
    with server(redis_url, **env) as (port, _):
        started = time.monotonic()
        b_key = {"Authorization": "Bearer b-key"}
        quiet = asyncio.run(trickle(port, redis_url, stream, rate, {"input": "quiet"}, b_key))
        flood_s = time.monotonic() - started
        client = redis.Redis.from_url(redis_url)
        drained(client, quiet + flood_ids[-1:])
        figures = {
            "flood_drained_s": round(flood_s, 2),
            "quiet_wait": summary(waits(client, quiet)),
            "flood_wait": summary(waits(client, flood_ids[:: max(1, jobs // 2000)])),
        }
        client.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs in tenant A's flood")
    parser.add_argument("--rate", type=float, default=100.0, help="B's submits a second")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"flood_jobs": args.jobs, "quiet_rate_per_s": args.rate}
    with tempfile.TemporaryDirectory() as data:
        keys = Path(data) / "keys.toml"
        digests = {name: hashlib.sha256(f"{name}-key".encode()).hexdigest() for name in "ab"}
        keys.write_text("".join(f'[tenants.{n}]\nkeys = ["{d}"]\n' for n, d in digests.items()))
        redis_server = RedisServer(Path(data) / "redis")
        url = redis_server.start()
        try:
            for name, path in (("one_queue", None), ("tenants", keys)):
                progress(f"{name}: {args.jobs:,} jobs of A queued, B submits {args.rate:g}/s")
                results[name] = run(url, args.jobs, args.rate, path)
        finally:
            redis_server.stop()
    (args.out / "tenants.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"Tenant A's backlog of {args.jobs:,} jobs (instant model, one replica); tenant B "
        f"submits a job at a time, {args.rate:g}/s, while A's backlog lasts."
    )
    print("| queue | A's backlog lasted s | B jobs | B wait p50 ms | B p99 ms | A wait p50 ms |")
    print("|---|---|---|---|---|---|")
    for name, label in (("one_queue", "no keys file (one queue)"), ("tenants", "tenants A, B")):
        row = results[name]
        b, a = row["quiet_wait"], row["flood_wait"]
        print(
            f"| {label} | {row['flood_drained_s']} | {b['count']:,} | {b['p50_ms']:,.1f} "
            f"| {b['p99_ms']:,.1f} | {a['p50_ms']:,.1f} |"
        )


if __name__ == "__main__":
    main()
