"""A repeatable fault drill with real processes on loopback.

    scripts/chaos [--jobs 3000] [--replicas 3] [--cluster]

N replicas of `python -m service` run a counting test model (tests.models:Counted
records, in a Redis of its own, how often each job ran). The drill submits the jobs
asynchronously across the replicas, kill -9s one replica mid-run, disrupts Redis once
(one node: a stop and restart; with --cluster, a Redis Cluster of three primaries built
for the drill: a failover of the primary that holds partition 0), waits for every
accepted job to end, and prints: accepted, done, failed, lost (accepted, never final),
duplicate final writes (a final record that changed after it was first seen), model
calls per id, and pending entries left.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts._http import wait_http  # noqa: E402
from service.redis.embedded import RedisServer, free_port  # noqa: E402
from service.redis.keys import Names, Partitions  # noqa: E402


def say(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def start_replica(
    redis_url: str, index: int, visibility: float, counts_url: str
) -> tuple[int, subprocess.Popen[bytes]]:
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "CHAOS_REDIS_URL": counts_url,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "MODEL": "tests.models:Counted",
        "WORKERS": "2",
        "MAX_BATCH_SIZE": "8",
        "VISIBILITY_TIMEOUT_SECONDS": str(visibility),
        "CONSUMER_NAME": f"replica{index}",
        "LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)
    return port, proc


async def wait_ready(port: int, within: float = 30) -> None:
    url = f"http://127.0.0.1:{port}/health/ready"
    await asyncio.to_thread(wait_http, url, within, need_ok=True)


async def submit_all(
    session: aiohttp.ClientSession,
    ports: list[int],
    jobs: int,
    accepted: dict[str, str],
    milestones: dict[int, asyncio.Event],
) -> None:
    """Submits every job, retrying on 429/503 (Redis down) and on dead replicas; sets each
    milestone's event once that many jobs are accepted."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(jobs):
        queue.put_nowait(n)

    async def sender(k: int) -> None:
        while not queue.empty():
            n = queue.get_nowait()
            token = uuid.uuid4().hex
            for attempt in range(200):
                port = ports[(n + attempt) % len(ports)]
                try:
                    async with session.post(
                        f"http://127.0.0.1:{port}/predict",
                        json={"input": {"n": n, "token": token}},
                        headers={"Async-Mode": "true", "Idempotency-Key": token},
                    ) as resp:
                        if resp.status == 202:
                            accepted[(await resp.json())["prediction_id"]] = token
                            for count, event in milestones.items():
                                if len(accepted) >= count:
                                    event.set()
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            else:
                say(f"job {n} never accepted")

    await asyncio.gather(*(sender(k) for k in range(16)))


def final_records(
    client: redis.Redis, partitions: Partitions, ids: list[str]
) -> dict[str, tuple[bytes, ...]]:
    pipe = client.pipeline(transaction=False)
    for prediction_id in ids:
        key = partitions.record(prediction_id)
        pipe.hmget(key, "status", "result", "error", "finished_at")
    out = {}
    for prediction_id, fields in zip(ids, pipe.execute(), strict=True):
        if fields[0] in (b"done", b"failed"):
            out[prediction_id] = tuple(fields)
    return out


class SingleRedis:
    """One redis-server; its disruption is a stop and a restart."""

    def __init__(self, folder: Path) -> None:
        self.server = RedisServer(folder / "redis", free_port())
        self.url = self.server.start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, retry_on_error=[redis.ConnectionError])

    async def disrupt(self) -> None:
        say("restarting Redis")
        await asyncio.to_thread(self.server.stop)
        await asyncio.sleep(1)
        await asyncio.to_thread(self.server.start)

    def stop(self) -> None:
        self.server.stop()


class ClusterRedis:
    """A Redis Cluster; its disruption is a failover of the primary of partition 0."""

    def __init__(self, folder: Path) -> None:
        from tests.topologies import start_cluster

        self.cluster = start_cluster(folder / "cluster")
        self.url = self.cluster.url

    def client(self) -> redis.Redis:
        return self.cluster.client()  # type: ignore[return-value]

    async def disrupt(self) -> None:
        from tests.topologies import until

        with self.cluster.client() as client:
            stream = partitions_in(client).all[0].stream
            primary = client.get_node_from_key(stream)
        with redis.Redis(host=primary.host, port=primary.port) as node:
            myid = node.execute_command("CLUSTER", "MYID").decode()
            line = node.execute_command("CLUSTER", "REPLICAS", myid)[0].decode()
        host, port = line.split()[1].split("@")[0].rsplit(":", 1)
        say(f"failing over {primary.name} to its replica {host}:{port}")
        replica = redis.Redis(host=host, port=int(port))
        replica.execute_command("CLUSTER", "FAILOVER")
        await asyncio.to_thread(
            until,
            lambda: replica.info("replication")["role"] == "master",
            30,
            "the replica took over",
        )
        replica.close()
        await asyncio.to_thread(until, self.cluster.healthy, 30, "the cluster is ok again")

    def stop(self) -> None:
        self.cluster.stop()


def partitions_in(client: redis.Redis) -> Partitions:
    """The queue's partitions, as the service stored them (or the single one)."""
    stored = client.get(Names().meta)
    if not stored:
        return Partitions.single(Names())
    return Partitions(Names(), json.loads(stored)["tags"], sharded=True)


async def drill(
    jobs: int, replicas: int, visibility: float, deadline_s: float, cluster: bool = False
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as data:
        target: SingleRedis | ClusterRedis = (
            ClusterRedis(Path(data)) if cluster else SingleRedis(Path(data))
        )
        counts = RedisServer(Path(data) / "counts", free_port())
        counts_url = counts.start()
        client = target.client()
        counter = redis.Redis.from_url(counts_url)
        procs: list[subprocess.Popen[bytes]] = []
        ports: list[int] = []
        accepted: dict[str, str] = {}
        try:
            for i in range(replicas):
                port, proc = start_replica(target.url, i, visibility, counts_url)
                ports.append(port)
                procs.append(proc)
            async with aiohttp.ClientSession() as session:
                for port in ports:
                    await wait_ready(port)
                partitions = partitions_in(client)
                say(f"{replicas} replicas up, {len(partitions)} partitions; {jobs} jobs")
                third, two_thirds = asyncio.Event(), asyncio.Event()
                milestones = {jobs // 3: third, 2 * jobs // 3: two_thirds}
                sending = asyncio.create_task(
                    submit_all(session, ports, jobs, accepted, milestones)
                )
                await third.wait()
                say(f"kill -9 replica 0 with {len(accepted)} accepted")
                procs[0].send_signal(signal.SIGKILL)
                procs[0].wait()
                live_ports = ports[1:]
                await two_thirds.wait()
                say(f"disrupting Redis with {len(accepted)} accepted")
                await target.disrupt()
                await sending
                say(f"all submitted: {len(accepted)} accepted; waiting for them to end")
                ids = list(accepted)
                first_seen: dict[str, tuple[bytes, ...]] = {}
                end = time.monotonic() + deadline_s
                while len(first_seen) < len(ids) and time.monotonic() < end:
                    missing = [i for i in ids if i not in first_seen]
                    for prediction_id, fields in final_records(client, partitions, missing).items():
                        first_seen.setdefault(prediction_id, fields)
                    await asyncio.sleep(0.2)
                # Let any late redelivery happen before the recount.
                await asyncio.sleep(2 * visibility)
                for port in live_ports:
                    await wait_ready(port)
            final = final_records(client, partitions, ids)
            calls = counter.hgetall("chaos:calls")
            pending = sum(client.xpending(k.stream, k.group)["pending"] for k in partitions.all)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            client.close()
            counter.close()
            target.stop()
            counts.stop()
    statuses = Counter(fields[0].decode() for fields in final.values())
    per_id = Counter(int(calls.get(accepted[i].encode(), 0)) for i in ids)
    return {
        "jobs": jobs,
        "accepted": len(ids),
        "done": statuses.get("done", 0),
        "failed": statuses.get("failed", 0),
        "lost": sum(1 for i in ids if i not in final),
        "duplicate_final_writes": sum(
            1 for i, fields in first_seen.items() if final.get(i) != fields
        ),
        "model_calls_per_id": {str(k): v for k, v in sorted(per_id.items())},
        "failure_reasons": dict(
            Counter(f[2].decode() for f in final.values() if f[0] == b"failed")
        ),
        "pending_left": pending,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--visibility", type=float, default=3.0, help="VISIBILITY_TIMEOUT")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds to wait")
    parser.add_argument("--cluster", action="store_true", help="on a Redis Cluster (Redis 7)")
    args = parser.parse_args()
    result = asyncio.run(
        drill(args.jobs, args.replicas, args.visibility, args.deadline, args.cluster)
    )
    print(json.dumps(result, indent=2))
    ok = (
        result["lost"] == 0
        and result["duplicate_final_writes"] == 0
        and result["pending_left"] == 0
        and result["done"] == result["accepted"] == result["jobs"]
        and all(int(k) in (1, 2) for k in result["model_calls_per_id"])
    )
    print("expected figures: " + ("yes" if ok else "NO"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
