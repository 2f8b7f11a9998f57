"""Priorities of queued jobs: high ones overtake a backlog, lower ones still progress
under a steady flow of higher ones, sync requests take the field (and run at once); on one
node and on a cluster (one partition there, so that every job is in the stream the worker reads)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from service.background import make_worker

from .helpers import ClientFactory, partitions_of, scrape_until, worker_for

MODES = pytest.mark.modes("single", "cluster")


async def submit_at(client: TestClient, value: Any, priority: str = "", **headers: str) -> str:
    body: dict[str, Any] = {"input": value}
    if priority:
        body["priority"] = priority
    resp = await client.post("/predict", json=body, headers={"Async-Mode": "true", **headers})
    assert resp.status == 202, await resp.text()
    return (await resp.json())["prediction_id"]  # type: ignore[no-any-return]


async def statuses(client: TestClient, ids: list[str]) -> list[str]:
    return [(await (await client.get(f"/predict/{p}")).json())["status"] for p in ids]


async def done(client: TestClient, ids: list[str]) -> list[str]:
    return [p for p, s in zip(ids, await statuses(client, ids), strict=True) if s == "done"]


async def one_partition(make_client: ClientFactory, **settings: Any) -> TestClient:
    return await make_client(model="tests.models:echo", workers=0, queue_partitions=1, **settings)


@MODES
async def test_high_jobs_overtake_a_backlog_of_normal_ones(make_client: ClientFactory) -> None:
    client = await one_partition(make_client)
    backlog = [await submit_at(client, f"normal {i}") for i in range(20)]
    low = await submit_at(client, "low", "low")
    urgent = [await submit_at(client, f"high {i}", "high") for i in range(3)]
    worker = worker_for(client, "w")  # batches of 8
    assert await worker.step() == 0  # its own pending entries: none
    assert await worker.step() == 8
    assert await done(client, urgent) == urgent, "the three high jobs came first"
    assert await done(client, backlog) == backlog[:5], "then the oldest normal ones"
    while await worker.step():
        pass
    everything = [*backlog, low]
    assert await done(client, everything) == everything


@MODES
async def test_lower_jobs_progress_under_a_steady_flow_of_high_ones(
    make_client: ClientFactory,
) -> None:
    client = await one_partition(make_client)
    lows = [await submit_at(client, f"low {i}", "low") for i in range(4)]
    normals = [await submit_at(client, f"normal {i}") for i in range(4)]
    worker = make_worker(client.server.app, "w", batch_size=1, block_ms=10)
    assert await worker.step() == 0
    highs = []
    for turn in range(16):
        highs.append(await submit_at(client, f"high {turn}", "high"))  # one always waits
        assert await worker.step() == 1
    # One batch in eight of a worker starts from the normal jobs, one from the low ones.
    assert await done(client, normals) == normals[:2]
    assert await done(client, lows) == lows[:2]
    assert await done(client, highs) == highs[:12]


async def test_a_sync_request_takes_a_priority_and_a_bad_one_is_422(
    make_client: ClientFactory,
) -> None:
    client = await make_client(model="tests.models:echo")
    for priority in ("high", "normal", "low"):  # it runs at once: the priority orders nothing
        resp = await client.post("/predict", json={"input": "x", "priority": priority})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["result"] == {"echo": "x"}
    resp = await client.post("/predict", json={"input": "x", "priority": "urgent"})
    assert resp.status == 422 and (await resp.json())["detail"][0]["loc"] == ["priority"]
    for path, body in (("/predict", {"input": "x"}), ("/predict/batch", {"inputs": ["x"]})):
        for bad in ("urgent", None, 1):
            resp = await client.post(
                path, json={**body, "priority": bad}, headers={"Async-Mode": "true"}
            )
            assert resp.status == 422, await resp.text()
            assert (await resp.json())["detail"][0]["loc"] == ["priority"]


@MODES
async def test_a_bulk_submit_queues_every_job_at_its_priority_in_order(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await one_partition(make_client)
    resp = await client.post("/predict/batch", json={"inputs": ["a", "b", "c"], "priority": "low"})
    assert resp.status == 202, await resp.text()
    ids = (await resp.json())["prediction_ids"]
    high, normal, low = partitions_of(client)[0].priorities
    assert [f[b"id"].decode() for _, f in await rds.xrange(low.stream)] == ids
    assert await rds.xlen(normal.stream) == 0 and await rds.xlen(high.stream) == 0
    assert await rds.hget(low.record(ids[0]), "priority") == b"low"
    # Every stream counts: in the queue figures and against MAX_QUEUE.
    await submit_at(client, "urgent", "high")
    await scrape_until(client, queue_backlog=4, queue_stream_length=4, queue_group_lag=4)


@MODES
async def test_max_queue_counts_the_jobs_of_every_priority(make_client: ClientFactory) -> None:
    client = await one_partition(make_client, max_queue=2)
    await submit_at(client, "a", "high")
    await submit_at(client, "b", "low")
    resp = await client.post("/predict", json={"input": "c"}, headers={"Async-Mode": "true"})
    assert resp.status == 429, await resp.text()


async def test_an_idempotency_key_names_the_priority_too(make_client: ClientFactory) -> None:
    client = await make_client(model="tests.models:echo", workers=0)
    key = {"Idempotency-Key": "job-1"}
    first = await submit_at(client, "x", "high", **key)
    assert await submit_at(client, "x", "high", **key) == first
    resp = await client.post("/predict", json={"input": "x"}, headers={"Async-Mode": "true", **key})
    assert resp.status == 409, await resp.text()
