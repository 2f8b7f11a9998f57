"""Redis work per job: the service beside the least a stream queue with stored results
does, on the same Redis binary. Starts its own redis-servers and replicas.

The service: one API-only replica (WORKERS=0) takes plain async submits of the instant
model from CONCURRENCY clients while one worker replica drains them. The baseline does
exactly the minimal command set, pipelined 32 jobs at a time: per job XADD, HSET and
EXPIRE of a record; a consumer's XREADGROUP of 32; per job HSET of the result, XACK and
PUBLISH. For each: Redis CPU (INFO cpu, user + sys) per job with the idle rate of the
same setup (replicas up, nothing sent) subtracted, and commands per job (INFO
commandstats, a script's call and each command it runs). Then what each feature adds to
a plain submit: an Idempotency-Key, a Cancel-After, a high priority. Last, the plain
submits again with STANDBY more API-only replicas up that take no requests: what
following the jobs costs when no one there waits for them (Redis's CPU and the bytes it
writes per job, INFO stats, beside the same figures with none standing by).

With --cluster the service runs on a Redis Cluster of three primaries (a replica each,
one partition per primary) and its figures are summed over the primaries; the baseline
stays on one node, where a minimal queue's one stream would live on a cluster too.

    scripts/bench --redis-cost [--jobs 20000] [--concurrency 64] [--standby 24] [--cluster]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench import server  # noqa: E402
from scripts.redis_local import find_redis7, start_cluster  # noqa: E402
from service.redis.embedded import RedisServer, free_port  # noqa: E402
from service.redis.keys import Names, Partitions  # noqa: E402

IDLE_SECONDS = 3.0
BATCH = 32


#: The servers measured: one node, or a cluster's primaries (their figures are summed).
Nodes = list[aioredis.Redis]


async def _figures(nodes: Nodes) -> tuple[float, int, dict[str, int], int]:
    """(Redis CPU seconds so far, commands so far, and by command (INFO's own left out),
    bytes written to clients so far), summed over ``nodes``."""
    seconds, by, written = 0.0, {}, 0
    for r in nodes:
        cpu = await r.info("cpu")
        stats = await r.info("commandstats")
        written += int((await r.info("stats"))["total_net_output_bytes"])
        for k, v in stats.items():
            name = k.removeprefix("cmdstat_")
            by[name] = by.get(name, 0) + int(v["calls"])
        seconds += float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    by.pop("info", None)
    return seconds, sum(by.values()), by, written


async def _idle_rate(nodes: Nodes) -> tuple[float, float]:
    """Redis CPU seconds and commands per second with nothing sent."""
    before = await _figures(nodes)
    await asyncio.sleep(IDLE_SECONDS)
    after = await _figures(nodes)
    return (after[0] - before[0]) / IDLE_SECONDS, (after[1] - before[1] - 2) / IDLE_SECONDS


async def _measured(
    nodes: Nodes, jobs: int, run: Callable[[], Any], idle: tuple[float, float]
) -> dict[str, Any]:
    before = await _figures(nodes)
    began = time.monotonic()
    await run()
    seconds = time.monotonic() - began
    after = await _figures(nodes)
    cpu = after[0] - before[0] - idle[0] * seconds
    calls = after[1] - before[1] - idle[1] * seconds
    by = {name: (n - before[2].get(name, 0)) / jobs for name, n in after[2].items()}
    return {
        "us": cpu / jobs * 1e6,
        "commands": calls / jobs,
        "bytes out": (after[3] - before[3]) / jobs,
        "seconds": seconds,
        "by": {name: per for name, per in by.items() if per >= 0.01},
    }


# ---- the baseline ---------------------------------------------------------------------


async def _baseline(url: str, jobs: int) -> dict[str, Any]:
    r = aioredis.from_url(url)
    stream, group = "jobs", "workers"
    await r.xgroup_create(stream, group, id="0", mkstream=True)
    idle = await _idle_rate([r])
    body = b'{"input": "x"}'

    async def produce() -> None:
        for first in range(0, jobs, BATCH):
            pipe = r.pipeline(transaction=False)
            for i in range(first, min(jobs, first + BATCH)):
                key = f"job:{i}"
                pipe.xadd(stream, {"id": key, "input": body})
                pipe.hset(key, mapping={"status": "queued", "input": body, "created_at": "1"})
                pipe.expire(key, 86400)
            await pipe.execute()

    async def consume() -> None:
        done = 0
        while done < jobs:
            got = await r.xreadgroup(group, "c", {stream: ">"}, count=BATCH, block=100)
            if not got:
                continue
            pipe = r.pipeline(transaction=False)
            for entry_id, fields in got[0][1]:
                key = fields[b"id"]
                pipe.hset(key, mapping={"status": "done", "result": b'"x"', "finished_at": "2"})
                pipe.xack(stream, group, entry_id)
                pipe.publish("done", key)
                done += 1
            await pipe.execute()

    async def both() -> None:
        await asyncio.gather(produce(), consume())

    figures = await _measured([r], jobs, both, idle)
    await r.aclose()
    return figures


# ---- the service ----------------------------------------------------------------------


Extra = Callable[[int], dict[str, str]]


async def _submits(
    backlog: Callable[[], Awaitable[int]],
    base: str,
    jobs: int,
    concurrency: int,
    extra: Extra,
) -> None:
    """``jobs`` async submits from ``concurrency`` clients, then until all ended."""
    numbers = iter(range(jobs))
    async with aiohttp.ClientSession() as http:

        async def client() -> None:
            for i in numbers:
                headers = {"Async-Mode": "true", **extra(i)}
                body = {"input": "x"}
                if "priority" in headers:
                    body["priority"] = headers.pop("priority")
                async with http.post(base + "/predict", json=body, headers=headers) as resp:
                    if resp.status != 202:
                        raise SystemExit(f"submit answered {resp.status}: {await resp.text()}")

        await asyncio.gather(*(client() for _ in range(concurrency)))
    deadline = time.monotonic() + 120
    while await backlog():  # jobs queued or running
        if time.monotonic() > deadline:
            raise SystemExit("the jobs did not drain within 120 s")
        await asyncio.sleep(0.05)


FEATURES: dict[str, Extra] = {
    "plain": lambda i: {},
    "Idempotency-Key": lambda i: {"Idempotency-Key": uuid.uuid4().hex},
    "Cancel-After": lambda i: {"Cancel-After": "10m"},
    "priority high": lambda i: {"priority": "high"},
}


async def _service(
    target: Target, base: str, jobs: int, concurrency: int, features: dict[str, Extra] = FEATURES
) -> dict[str, dict[str, Any]]:
    client = target.client()
    nodes = [aioredis.Redis(port=port) for port in target.primaries]
    stored = await client.get(Names().meta)
    names = Names()
    partitions = (
        Partitions(names, json.loads(stored)["tags"], sharded=True)
        if stored
        else Partitions.single(names)
    )

    async def backlog() -> int:
        return sum([await client.hlen(keys.backlog) for keys in partitions.all])

    try:
        await _submits(backlog, base, 500, concurrency, FEATURES["plain"])  # warm up
        idle = await _idle_rate(nodes)
        out = {}
        for name, extra in features.items():
            out[name] = await _measured(
                nodes, jobs, lambda e=extra: _submits(backlog, base, jobs, concurrency, e), idle
            )
        return out
    finally:
        for r in nodes:
            await r.aclose()
        await client.aclose()


class Target:
    """The Redis the service runs on: ``url``, its primaries' ports, and whether it is a
    cluster."""

    def __init__(self, url: str, primaries: list[int], cluster: bool = False) -> None:
        self.url = url
        self.primaries = primaries
        self.cluster = cluster

    def client(self) -> Any:
        if self.cluster:
            return aioredis.RedisCluster(host="127.0.0.1", port=self.primaries[0])
        return aioredis.from_url(self.url)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--standby", type=int, default=24, help="API-only replicas (0: skip)")
    parser.add_argument("--cluster", action="store_true", help="the service on a cluster")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        redis_server = RedisServer(folder / "base", free_port())
        try:
            base = asyncio.run(_baseline(redis_server.start(), args.jobs))
        finally:
            redis_server.stop()
        if args.cluster:
            cluster = start_cluster(folder / "cluster", *find_redis7())
            ports = [s.port for s in cluster.primaries()]
            target, stop = Target(cluster.url, ports, cluster=True), cluster.stop
        else:
            redis_server = RedisServer(folder / "service", free_port())
            url = redis_server.start()
            target, stop = Target(url, [redis_server.port]), redis_server.stop
        url = target.url
        common = {"model": "examples.instant:Instant", "log_level": "ERROR"}
        try:
            with (
                server(url, workers=0, consumer_name="api", data_dir=folder / "api", **common) as (
                    port,
                    _,
                ),
                server(url, workers=1, consumer_name="worker", data_dir=folder / "w", **common),
            ):
                api = f"http://127.0.0.1:{port}"
                service = asyncio.run(_service(target, api, args.jobs, args.concurrency))
                standing: dict[str, Any] | None = None
                if args.standby:
                    with contextlib.ExitStack() as stack:
                        for i in range(args.standby):
                            stack.enter_context(
                                server(
                                    url,
                                    workers=0,
                                    consumer_name=f"standby-{i}",
                                    data_dir=folder / f"standby-{i}",
                                    **common,
                                )
                            )
                        standing = asyncio.run(
                            _service(
                                target,
                                api,
                                args.jobs,
                                args.concurrency,
                                {"plain": FEATURES["plain"]},
                            )
                        )["plain"]
        finally:
            stop()
    plain = service["plain"]
    where = "on a three-primary cluster, summed" if args.cluster else "on one node"
    print(f"Redis work per job, {args.jobs:,} jobs a run (idle subtracted), the service {where}:")
    print("| | Redis CPU per job (us) | commands per job |\n|---|---:|---:|")
    print(
        f"| baseline (the least a stream queue does) | {base['us']:.1f} | {base['commands']:.1f} |"
    )
    print(f"| the service, plain async submits | {plain['us']:.1f} | {plain['commands']:.1f} |")
    print(
        f"| ratio | {plain['us'] / base['us']:.2f}x | {plain['commands'] / base['commands']:.2f}x |"
    )
    print("\nCommands per job by command (the service's plain run; baseline's):")
    for name, per in sorted(plain["by"].items(), key=lambda item: -item[1]):
        print(f"  {name:<14} {per:6.2f}   {base['by'].get(name, 0):6.2f}")
    written = plain["bytes out"], base["bytes out"]
    print(f"\nRedis writes {written[0]:.0f} bytes per job (the baseline {written[1]:.0f}).")
    if standing is not None:
        print(f"\nWith {args.standby} more API-only replicas standing by (plain submits):")
        print("| | Redis CPU per job (us) | bytes written per job |\n|---|---:|---:|")
        print(f"| none standing by | {plain['us']:.1f} | {plain['bytes out']:.0f} |")
        print(
            f"| {args.standby} standing by | {standing['us']:.1f} | {standing['bytes out']:.0f} |"
        )
        print(
            f"| ratio | {standing['us'] / plain['us']:.2f}x | "
            f"{standing['bytes out'] / plain['bytes out']:.2f}x |"
        )
    print("\nWhat a feature adds to a plain submit:")
    print("| feature | Redis CPU per job (us) | commands per job |\n|---|---:|---:|")
    for name, figures in service.items():
        if name != "plain":
            print(
                f"| {name} | {figures['us'] - plain['us']:+.1f} | "
                f"{figures['commands'] - plain['commands']:+.1f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
