"""What one open dashboard costs Redis: commands and Redis CPU (us, from INFO
commandstats) per refresh of each of its reads, with an hour of activity buckets filled as
a busy service with several tenants fills them, the lists of latest jobs full, and a
queue of jobs waiting; and what a replica's flush costs. Starts its own redis-server and
service (`python -m service`).

    scripts/bench --dashboard [--tenants 4] [--refreshes 200]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench import server  # noqa: E402
from service.observability.activity import (  # noqa: E402
    BINS,
    BUCKET_SECONDS,
    ENDED_KEPT,
    FAILED_KEPT,
    KEPT_SECONDS,
)
from service.redis.embedded import RedisServer, free_port  # noqa: E402
from service.redis.keys import Names  # noqa: E402

ADMIN = "admin-key"


async def _stats(r: aioredis.Redis) -> tuple[int, int]:
    """(commands, usec) so far, INFO's own calls left out."""
    stats = await r.info("commandstats")
    calls = usec = 0
    for name, figures in stats.items():
        if name in ("cmdstat_info",):
            continue
        calls += int(figures["calls"])
        usec += int(figures["usec"])
    return calls, usec


async def _fill(r: aioredis.Redis, tenants: list[str]) -> None:
    """An hour of buckets, each as a busy service fills it, and the job lists full."""
    names = Names()
    now = int(time.time()) // BUCKET_SECONDS * BUCKET_SECONDS
    pipe = r.pipeline(transaction=False)
    for start in range(now - 3600 + BUCKET_SECONDS, now + 1, BUCKET_SECONDS):
        fields: dict[str, int] = {}
        for tenant in tenants:
            fields.update({f"{tenant}|sub": 500, f"{tenant}|done": 490, f"{tenant}|failed": 10})
            for i in range(len(BINS) + 1):
                fields[f"{tenant}|w{i}"] = 30
                fields[f"{tenant}|r{i}"] = 30
        pipe.hset(names.activity(start), mapping=fields)
        pipe.expire(names.activity(start), KEPT_SECONDS)
    job = orjson.dumps(
        {"id": "0" * 36, "model": "default", "tenant": tenants[0], "status": "failed",
         "error": "e" * 200, "at": now, "mode": "async"}
    )  # fmt: skip
    for tenant in tenants:
        pipe.lpush(names.ended(tenant), *[job] * ENDED_KEPT)
        pipe.lpush(names.failures(tenant), *[job] * FAILED_KEPT)
    await pipe.execute()


async def _measure(r: aioredis.Redis, base: str, path: str, key: str, times: int) -> dict[str, Any]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        async with http.get(base + path) as warm:
            assert warm.status == 200, await warm.text()
        before = await _stats(r)
        for _ in range(times):
            async with http.get(base + path) as resp:
                await resp.read()
        after = await _stats(r)
    return {
        "commands": (after[0] - before[0]) / times,
        "usec": (after[1] - before[1]) / times,
    }


#: What is measured: a name, the path, whose key (None: a tenant's), refreshes divided by.
READS = (
    ("page load: overview of the hour (admin)", "/dashboard/api/overview?since=0", ADMIN, 10),
    ("overview refresh (admin, every 2 s)", "/dashboard/api/overview?since={since}", ADMIN, 1),
    ("overview refresh (a tenant)", "/dashboard/api/overview?since={since}", None, 1),
    ("jobs page refresh: latest ended", "/dashboard/api/jobs", ADMIN, 1),
    ("jobs page refresh: failures", "/dashboard/api/jobs?status=failed", ADMIN, 1),
    ("jobs queued list", "/dashboard/api/jobs?status=queued", ADMIN, 1),
    ("tenants page refresh (admin)", "/dashboard/api/tenants", ADMIN, 1),
)


async def _run(
    base: str, url: str, tenants: list[str], times: int
) -> list[tuple[str, dict[str, Any]]]:
    r = aioredis.from_url(url)
    await _fill(r, tenants)
    async with aiohttp.ClientSession() as http:
        for i in range(300):  # a queue waiting
            key = f"{tenants[i % len(tenants)]}-key"
            headers = {"Async-Mode": "true", "Authorization": f"Bearer {key}"}
            async with http.post(base + "/predict", json={"input": "x"}, headers=headers) as resp:
                assert resp.status == 202, await resp.text()
    since = int(time.time()) - 20
    rows = []
    for name, path, key, fewer in READS:
        path = path.format(since=since)
        figures = await _measure(r, base, path, key or f"{tenants[0]}-key", max(10, times // fewer))
        rows.append((name, figures))
    await r.aclose()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--refreshes", type=int, default=200)
    args = parser.parse_args()
    tenants = [f"t{i}" for i in range(args.tenants)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        keys = folder / "keys.toml"
        keys.write_text(
            "".join(
                f'[tenants.{t}]\nkeys = ["{hashlib.sha256(f"{t}-key".encode()).hexdigest()}"]\n'
                for t in tenants
            )
        )
        redis_server = RedisServer(folder / "redis", free_port())
        url = redis_server.start()
        env = {
            "model": "tests.models:echo",
            "workers": 0,
            "api_keys_file": keys,
            "admin_api_key": ADMIN,
            "log_level": "ERROR",
            "data_dir": folder / "data",
        }
        try:
            with server(url, **env) as (port, _):
                rows = asyncio.run(_run(f"http://127.0.0.1:{port}", url, tenants, args.refreshes))
        finally:
            redis_server.stop()
    print(f"Redis per dashboard read ({args.tenants} tenants, an hour of buckets, lists full,")
    print("300 jobs queued; Redis CPU from INFO commandstats):")
    print("| read | commands | Redis CPU (us) |\n|---|---:|---:|")
    for name, figures in rows:
        print(f"| {name} | {figures['commands']:.0f} | {figures['usec']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
