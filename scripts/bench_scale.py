"""Scale-out figures, measured in one run (`scripts/bench --scale`):

a. Redis CPU per job (submit and drain), from INFO on the primaries (used_cpu_sys and
   used_cpu_user deltas, with commandstats), on one node and on a three-primary cluster:
   the figure that tells how many jobs a second one shard can carry.
d. What a long-poll waiter costs its replica (memory), and how fast waiters are answered
   when their jobs end on another replica (one node: PUBLISH; cluster: SPUBLISH).
b. Drain jobs/s with 1, 2 and 3 replicas on the cluster, with a model that sleeps 10 ms
   a job (it releases the GIL), at the same WORKERS; and whether any job ran twice.
c. The instant model's drain on one node (one partition) and on the cluster (three).

Starts everything it uses (Redis 7 on PATH for the cluster) and stops it.
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
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench import INSTANT, TEXT, drive, progress, rss_mb, server  # noqa: E402
from service.job import NewJob, entry_fields, queued_record  # noqa: E402
from service.redis.embedded import RedisServer  # noqa: E402
from service.redis.keys import Names, Partitions  # noqa: E402
from tests.topologies import Cluster, start_cluster  # noqa: E402

SLEEPY = "tests.models:sleepy"


class Target:
    """A Redis to measure: one node, or the cluster."""

    def __init__(self, url: str, primaries: list[int], cluster: Cluster | None = None) -> None:
        self.url = url
        self.primaries = primaries
        self.cluster = cluster

    def client(self) -> Any:
        return self.cluster.client() if self.cluster else redis.Redis.from_url(self.url)

    def flush(self) -> None:
        for port in self.primaries:
            with redis.Redis(port=port) as node:
                node.flushall()

    def cpu(self) -> tuple[float, int]:
        """Seconds of CPU the primaries used so far, and the commands they ran."""
        seconds, commands = 0.0, 0
        for port in self.primaries:
            with redis.Redis(port=port) as node:
                cpu = node.info("cpu")
                seconds += float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
                stats = node.info("commandstats")
                commands += sum(int(v["calls"]) for v in stats.values())
        return seconds, commands

    def partitions(self) -> Partitions:
        stored = self.client().get(Names().meta)
        if not stored:
            return Partitions.single(Names())
        return Partitions(Names(), json.loads(stored)["tags"], sharded=True)


def enqueue(target: Target, count: int, value: Any) -> list[str]:
    """Queues ``count`` jobs straight into Redis, spread over the partitions as the
    service spreads them (the layout of service.job), and creates the groups."""
    partitions = target.partitions()
    client = target.client()
    for keys in partitions.all:
        try:
            client.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
    raw = json.dumps(value).encode()
    now = repr(time.time())
    ids = [partitions.new_id() for _ in range(count)]
    for start in range(0, count, 2000):
        pipe = client.pipeline(transaction=False)
        for prediction_id in ids[start : start + 2000]:
            keys = partitions.of(prediction_id)
            job = NewJob(prediction_id, "default", raw)
            pipe.hset(keys.record(prediction_id), mapping=queued_record(job, now))
            pipe.xadd(keys.stream, entry_fields(job, now))
        pipe.execute()
    return ids


def wait_done(target: Target, ids: list[str], within: float = 600) -> list[list[bytes]]:
    partitions = target.partitions()
    client = target.client()
    deadline = time.monotonic() + within
    while True:
        pipe = client.pipeline(transaction=False)
        for prediction_id in ids:
            pipe.hmget(
                partitions.record(prediction_id), "status", "started_at", "finished_at", "attempts"
            )
        rows = pipe.execute()
        if all(row[0] == b"done" for row in rows):
            return rows
        if time.monotonic() > deadline:
            raise RuntimeError("jobs not done in time")
        time.sleep(0.2)


def rate(rows: list[list[bytes]]) -> float:
    started = min(float(r[1]) for r in rows)
    finished = max(float(r[2]) for r in rows)
    return len(rows) / (finished - started)


def cpu_per_job(target: Target, args: argparse.Namespace) -> dict[str, float]:
    """a: submits over HTTP for a while with a replica draining them, then Redis' CPU and
    commands per job."""
    target.flush()
    with server(target.url, model=INSTANT) as (port, _):
        before = target.cpu()
        run = drive(
            f"http://127.0.0.1:{port}/predict", {"input": TEXT}, {"Async-Mode": "true"}, args
        )
        client = target.client()
        partitions = target.partitions()
        deadline = time.monotonic() + 120
        while sum(client.xlen(k.stream) for k in partitions.all) and time.monotonic() < deadline:
            time.sleep(0.1)
        after = target.cpu()
    jobs = run["rps"] * args.duration
    return {
        "jobs": jobs,
        "redis_cpu_us_per_job": (after[0] - before[0]) / jobs * 1e6,
        "redis_commands_per_job": (after[1] - before[1]) / jobs,
    }


def drain_with_replicas(target: Target, replicas: int, jobs: int, workers: int) -> dict[str, Any]:
    """b: ``replicas`` replicas, all up and idle, then ``jobs`` queued at once, drained with
    the sleepy model (batches of 8, so that the end of the drain is not one replica's last
    long batch)."""
    target.flush()
    with server(target.url, model=SLEEPY, workers=0):
        pass  # decides and stores the partitions
    servers = [
        server(
            target.url,
            model=SLEEPY,
            workers=workers,
            max_batch_size=8,
            consumer_name=f"r{i}",
        )
        for i in range(replicas)
    ]
    for opened in servers:
        opened.__enter__()
    try:
        ids = enqueue(target, jobs, "x")
        rows = wait_done(target, ids)
    finally:
        for opened in servers:
            opened.__exit__(None, None, None)
    return {
        "replicas": replicas,
        "jobs_per_s": rate(rows),
        "ran_twice": sum(1 for r in rows if int(r[3]) > 1),
    }


def instant_drain(target: Target, jobs: int, rounds: int) -> float:
    """c: one replica drains ``jobs`` queued instant-model jobs; the median of rounds."""
    rates = []
    for _ in range(rounds):
        target.flush()
        with server(target.url, model=INSTANT, workers=0):
            pass
        ids = enqueue(target, jobs, "x")
        with server(target.url, model=INSTANT):
            rows = wait_done(target, ids)
        rates.append(rate(rows))
    return statistics.median_low(rates)


def waiter_cost(target: Target, waiters: int) -> dict[str, float]:
    """d: the memory a long-poll waiter holds on its replica, and how long the replica
    takes to wake them all when their jobs end on another replica (channel messages)."""
    target.flush()
    with server(target.url, model=INSTANT, workers=0) as (port, proc):
        base = f"http://127.0.0.1:{port}"

        async def run() -> dict[str, float]:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                ids = []
                for start in range(0, waiters, 500):
                    count = min(500, waiters - start)
                    async with http.post(
                        base + "/predict/batch", json={"inputs": ["x"] * count}
                    ) as resp:
                        ids += (await resp.json())["prediction_ids"]
                await asyncio.sleep(1)
                before = rss_mb(proc.pid)
                polls = [
                    asyncio.ensure_future(http.get(f"{base}/predict/{i}?wait=60")) for i in ids
                ]
                await asyncio.sleep(3)  # every long-poll reaches its handler and waits
                held = rss_mb(proc.pid) - before
                with server(target.url, model=INSTANT, consumer_name="worker"):
                    began = time.monotonic()
                    answers = await asyncio.gather(*polls)
                    woken = time.monotonic() - began
                statuses = [(await a.json())["status"] for a in answers]
                return {
                    "waiters": waiters,
                    "kb_per_waiter": held * 1024 / waiters,
                    "seconds_to_answer_all": woken,
                    "done": statuses.count("done"),
                }

        return asyncio.run(run())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds of submits for a")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=6000, help="jobs per drain in b")
    parser.add_argument("--only", default="abcd", help="which figures (letters)")
    parser.add_argument("--instant-jobs", type=int, default=30_000, help="jobs per drain in c")
    parser.add_argument("--workers", type=int, default=3, help="WORKERS of each replica in b")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--waiters", type=int, default=500, help="long-polls in d")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as data:
        single = RedisServer(Path(data) / "single")
        single_url = single.start()
        progress("starting a Redis Cluster of three primaries with a replica each")
        cluster = start_cluster(Path(data) / "cluster")
        one = Target(single_url, [single.port])
        many = Target(
            cluster.url,
            [s.port for s in cluster.primaries()],
            cluster,
        )
        try:
            for name, target in (("one_node", one), ("cluster", many)):
                if "a" in args.only:
                    progress(f"a. Redis CPU per job, {name}")
                    results[f"a_{name}"] = cpu_per_job(target, args)
            for replicas in (1, 2, 3):
                if "b" in args.only:
                    progress(f"b. drain {args.jobs} sleepy jobs with {replicas} replica(s)")
                    results[f"b_{replicas}"] = drain_with_replicas(
                        many, replicas, args.jobs, args.workers
                    )
            for name, target in (("one_partition", one), ("three_shards", many)):
                if "c" in args.only:
                    progress(f"c. instant drain, {name}")
                    results[f"c_{name}"] = instant_drain(target, args.instant_jobs, args.rounds)
            for name, target in (("one_node", one), ("cluster", many)):
                if "d" in args.only:
                    progress(f"d. what {args.waiters} long-poll waiters cost, {name}")
                    results[f"d_{name}"] = waiter_cost(target, args.waiters)
        finally:
            cluster.stop()
            single.stop()
    report(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench-scale.json").write_text(json.dumps(results, indent=2))


def report(r: dict[str, Any]) -> None:
    print("| | measurement | figure |")
    print("|---|---|---|")
    for name, key in (("one node", "a_one_node"), ("cluster (3 primaries)", "a_cluster")):
        if key not in r:
            continue
        row = r[key]
        print(
            f"| a | Redis CPU per job, submit + drain, {name} | "
            f"{row['redis_cpu_us_per_job']:.1f} us ({row['redis_commands_per_job']:.1f} "
            f"commands), {row['jobs']:,.0f} jobs |"
        )
    base = r["b_1"]["jobs_per_s"] if "b_1" in r else 0.0
    for replicas in (1, 2, 3):
        if f"b_{replicas}" not in r:
            continue
        row = r[f"b_{replicas}"]
        print(
            f"| b | drain, 10 ms model, {replicas} replica(s) on the cluster | "
            f"{row['jobs_per_s']:,.0f} jobs/s = {row['jobs_per_s'] / base:.2f}x; "
            f"ran twice: {row['ran_twice']} |"
        )
    if "c_one_partition" in r:
        print(
            f"| c | instant drain, one partition (one node) | {r['c_one_partition']:,.0f} jobs/s |"
        )
        print(f"| c | instant drain, three shards (cluster) | {r['c_three_shards']:,.0f} jobs/s |")
    for name in ("one_node", "cluster"):
        if f"d_{name}" not in r:
            continue
        row = r[f"d_{name}"]
        print(
            f"| d | a long-poll waiter, {name} | {row['kb_per_waiter']:.1f} KB held; "
            f"{row['waiters']:,} answered in {row['seconds_to_answer_all']:.2f} s "
            f"({row['done']:,} done) |"
        )
    if "b_3" in r:
        print(f"\nb, 1 to 3 replicas: {r['b_3']['jobs_per_s'] / base:.2f}x (target >= 2.7x)")


if __name__ == "__main__":
    main()
