"""Past one Redis: connection modes chosen by REDIS_URL, a partitioned queue on a Redis
Cluster (every primary gets work, no partition starves, the partition count is kept), and
a Sentinel failover under load, with and without DURABLE_SUBMIT."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from service.redis.url import BadRedisUrl, parse

from .helpers import ASYNC, ROOT, ClientFactory, partitions_of, poll, submit, wait_final
from .topologies import Cluster, SentinelSet, start_sentinels, until


@pytest.mark.parametrize(
    ("url", "mode", "nodes", "master", "db"),
    [
        ("redis://localhost:6379/0", "single", (), "", 0),
        (
            "redis+sentinel://a:26379,b:26380/mymaster/2",
            "sentinel",
            (("a", 26379), ("b", 26380)),
            "mymaster",
            2,
        ),
        ("redis+cluster://u:p%40ss@a:7000,b:7001", "cluster", (("a", 7000), ("b", 7001)), "", 0),
    ],
)
def test_the_url_alone_chooses_the_mode(
    url: str, mode: str, nodes: tuple[Any, ...], master: str, db: int
) -> None:
    target = parse(url)
    assert (target.mode, target.nodes, target.master, target.db) == (mode, nodes, master, db)
    if mode == "cluster":
        assert (target.username, target.password) == ("u", "p@ss")
        assert "p@ss" not in target.redacted


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("localhost:6379", "has no scheme"),
        ("redis+clustr://a:1", "scheme 'redis+clustr' is not known"),
        ("redis+cluster://a", "'a' is not host:port"),
        ("redis+cluster://a:70000", "out of range"),
        ("redis+cluster://a:1/0", "has no databases"),
        ("redis+sentinel://a:26379", "names no primary"),
    ],
)
def test_a_bad_url_is_a_clear_start_up_error(url: str, why: str) -> None:
    with pytest.raises(BadRedisUrl, match=re.escape(why)):
        parse(url)
    run = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "REDIS_URL" in run.stderr and why in run.stderr and "Traceback" not in run.stderr


@pytest.mark.modes("cluster")
async def test_jobs_land_on_every_primary(
    make_client: ClientFactory, redis_cluster: Cluster
) -> None:
    api = await make_client(workers=0)
    for i in range(30):
        await submit(api, f"job {i}")
    partitions = partitions_of(api)
    assert len(partitions) == 3, "one partition per primary by default"
    with redis_cluster.client() as client:
        owners = {client.get_node_from_key(k.stream).name for k in partitions.all}
        assert len(owners) == 3, "each partition on its own primary"
        for keys in partitions.all:
            assert client.xlen(keys.stream) > 0, f"partition {keys.index} got no job"


@pytest.mark.modes("cluster")
async def test_a_stalled_primary_holds_up_only_the_requests_of_its_own_partition(
    make_client: ClientFactory, redis_cluster: Cluster
) -> None:
    api = await make_client(workers=0, model="tests.models:echo", redis_timeout_seconds=0.4)
    partitions = partitions_of(api)
    ids = [await submit(api, f"job {i}") for i in range(12)]
    with redis_cluster.client() as client:
        stalled = client.get_node_from_key(partitions[0].stream).port
    (server,) = [s for s in redis_cluster.servers if s.port == stalled]
    assert server.pid is not None
    loop = asyncio.get_running_loop()

    async def timed(method: str, path: str, **kwargs: Any) -> tuple[int, float, Any]:
        began = loop.time()
        resp = await api.request(method, path, **kwargs)
        return resp.status, loop.time() - began, resp

    os.kill(server.pid, signal.SIGSTOP)  # shorter than the node timeout: no failover
    try:
        submits = [
            ("POST", "/predict", {"json": {"input": i}, "headers": ASYNC}) for i in range(30)
        ]
        reads = [("GET", f"/predict/{p}", {}) for p in ids]
        answers = await asyncio.gather(*(timed(m, path, **kw) for m, path, kw in submits + reads))
    finally:
        os.kill(server.pid, signal.SIGCONT)
    for (method, path, _), (status, took, resp) in zip(submits + reads, answers, strict=True):
        if status == 503:
            assert resp.headers["Retry-After"] == "1"
            assert 0.3 < took < 1.0, (method, path, took)
        else:
            assert status in (200, 202), (method, path, status)
            assert took < 0.3, (method, path, took)
    held = [
        path
        for (_, path, _), (status, _, _) in zip(reads, answers[30:], strict=True)
        if status == 503
    ]
    assert held == [f"/predict/{p}" for p in ids if partitions.of(p).index == 0]
    assert 0 < sum(status == 503 for status, _, _ in answers[:30]) < 30
    until(redis_cluster.healthy, what="the cluster is ok again")


@pytest.mark.modes("cluster")
async def test_one_worker_reads_every_partition_in_order(make_client: ClientFactory) -> None:
    api = await make_client(workers=0, model="tests.models:echo")
    partitions = partitions_of(api)
    bulks = []
    for _ in range(6):  # bulk submits: each all in one partition, in order
        resp = await api.post("/predict/batch", json={"inputs": [1, 2, 3, 4]})
        bulks.append((await resp.json())["prediction_ids"])
    assert len({partitions.of(ids[0]).index for ids in bulks}) > 1, "more than one partition"
    await make_client(workers=1, max_batch_size=1, consumer_name="lone", model="tests.models:echo")
    for ids in bulks:
        records = [await wait_final(api, p) for p in ids]
        assert [r["status"] for r in records] == ["done"] * 4
        starts = [r["started_at"] for r in records]
        assert starts == sorted(starts), "run in the order they were queued"


@pytest.mark.modes("cluster")
async def test_a_partition_count_other_than_the_stored_one_is_refused(
    make_client: ClientFactory, redis_url: str
) -> None:
    await make_client(workers=0)  # stores 3 partitions
    env = {**os.environ, "REDIS_URL": redis_url, "QUEUE_PARTITIONS": "2"}
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "QUEUE_PARTITIONS=2, but the queue stored in Redis was made with 3" in run.stderr
    assert "Traceback" not in run.stderr


async def _flood(client: Any, accepted: list[str], refused: list[int], stop: asyncio.Event) -> None:
    """Submits jobs until told to stop, noting the accepted ids and the refusals."""
    n = 0
    while not stop.is_set():
        n += 1
        try:
            resp = await client.post("/predict", json={"input": n}, headers={"Async-Mode": "true"})
            if resp.status == 202:
                accepted.append((await resp.json())["prediction_id"])
            else:
                refused.append(resp.status)
        except Exception:  # the connection itself failed mid-failover
            refused.append(0)
        await asyncio.sleep(0.005)


@pytest.mark.topology
@pytest.mark.timeout(120)
@pytest.mark.parametrize("durable", [False, True], ids=["plain", "durable"])
async def test_sentinel_follows_a_failover_under_load(
    make_client: ClientFactory, tmp_path: Path, durable: bool
) -> None:
    sentinels: SentinelSet = start_sentinels(tmp_path)
    try:
        client = await make_client(
            redis_url=sentinels.url, workers=1, model="tests.models:echo", durable_submit=durable
        )
        accepted: list[str] = []
        refused: list[int] = []
        stop = asyncio.Event()
        flood = asyncio.create_task(_flood(client, accepted, refused, stop))
        await poll(lambda: _at_least(accepted, 50))
        old = sentinels.primary_port()
        killed = sentinels.primary if sentinels.primary.port == old else sentinels.replica

        killed.kill()  # the primary dies without a word
        await asyncio.to_thread(until, lambda: sentinels.primary_port() != old, 30, "failover")

        await asyncio.to_thread(killed.start)  # back, and made a replica by the sentinels
        before = len(accepted)
        await poll(lambda: _at_least(accepted, before + 50), within=30)  # no restart needed
        stop.set()
        await flood
        finals = []
        for prediction_id in accepted:
            resp = await client.get(f"/predict/{prediction_id}?wait=10")
            finals.append(resp.status == 200 and (await resp.json())["status"] == "done")
        lost = finals.count(False)
        print(
            json.dumps(
                {
                    "durable_submit": durable,
                    "accepted": len(accepted),
                    "lost": lost,
                    "refused_during_failover": len(refused),
                }
            )
        )
        if durable:
            assert lost == 0, "an acknowledged durable submit survives the failover"
    finally:
        sentinels.stop()


async def _at_least(items: list[str], count: int) -> bool:
    return len(items) >= count


@pytest.mark.topology
def test_a_cluster_client_refuses_a_cross_slot_script_the_service_never_sends(
    redis_cluster: Cluster,
) -> None:
    # Why every key a script touches shares a hash tag: a cluster refuses anything else.
    with redis_cluster.client() as client, pytest.raises(redis.RedisClusterException):
        client.eval("return 1", 2, "{a}x", "{b}y")
