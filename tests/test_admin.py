"""The admin routes (ADMIN_API_KEY): dead letters listed with their reason and attempts,
replayed (same id, fresh attempts, once however often asked) and purged, on one node and
on a cluster (where the dead letters of each partition live on their own shard)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from service.http import state

from . import models
from .helpers import ClientFactory, dead_letter, poll, scrape_until, wait_final, worker_for

ADMIN = {"Authorization": "Bearer root-key"}


async def admin_client(make_client: ClientFactory, **settings: Any) -> TestClient:
    return await make_client(
        model="tests.models:echo", workers=0, max_deliveries=2, admin_api_key="root-key", **settings
    )


@pytest.mark.modes("single", "cluster")
async def test_a_dead_letter_is_listed_then_replayed_once_under_its_id(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await admin_client(make_client)
    prediction_id = await dead_letter(client, rds, "poison")
    listed = await (await client.get("/admin/dead-letters", headers=ADMIN)).json()
    assert listed["total"] == 1 and listed["next"] is None
    (item,) = listed["items"]
    assert item["prediction_id"] == prediction_id
    assert item["reason"] == "gave up after 2 deliveries"
    assert (item["attempts"], item["model"], item["status"]) == (2, "default", "failed")

    first = await client.post(f"/admin/dead-letters/{prediction_id}/replay", headers=ADMIN)
    assert first.status == 200, await first.text()
    assert await first.json() == {"prediction_id": prediction_id, "replayed": True}
    again = await client.post(f"/admin/dead-letters/{prediction_id}/replay", headers=ADMIN)
    assert await again.json() == {"prediction_id": prediction_id, "replayed": False}
    all_again = await client.post("/admin/dead-letters/replay", headers=ADMIN)
    assert await all_again.json() == {"replayed": 0, "gone": 0}

    record = await (await client.get(f"/predict/{prediction_id}")).json()
    assert record["status"] == "queued" and "error" not in record
    keys = client.server.app[state.PARTITIONS].of(prediction_id)
    assert await rds.xlen(keys.stream) == 1, "queued once, however often replayed"
    assert await rds.xlen(keys.dead_letters) == 0
    assert await rds.hget(keys.record(prediction_id), "attempts") == b"0"
    # A worker runs it, under its old id; the backlog counts it while it waits.
    await scrape_until(client, queue_backlog=1)
    worker = worker_for(client, "healthy", job=prediction_id)

    async def ran() -> bool:
        await worker.step()
        return bool((await rds.hget(keys.record(prediction_id), "status")) == b"done")

    await poll(ran)
    assert (await wait_final(client, prediction_id))["output"]["result"] == {"echo": "poison"}
    assert models.calls[repr("poison")] == 1
    await scrape_until(client, queue_backlog=0, queue_dead_letters=0)


@pytest.mark.modes("single", "cluster")
async def test_pages_replay_all_and_purge(make_client: ClientFactory, rds: Redis) -> None:
    client = await admin_client(make_client)
    ids = {await dead_letter(client, rds, f"poison {i}") for i in range(3)}
    seen: list[str] = []
    after = ""
    for _ in range(3):
        query = {"limit": "2"} | ({"after": after} if after else {})
        page = await (await client.get("/admin/dead-letters", params=query, headers=ADMIN)).json()
        assert page["total"] == 3 and len(page["items"]) <= 2
        seen += [item["prediction_id"] for item in page["items"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert sorted(seen) == sorted(ids), "every letter once, on pages of two"

    # One record expired meanwhile: its letter is dropped, not replayed.
    expired = sorted(ids)[0]
    await rds.delete(client.server.app[state.PARTITIONS].record(expired))
    replayed = await client.post("/admin/dead-letters/replay", headers=ADMIN)
    assert await replayed.json() == {"replayed": 2, "gone": 1}
    for prediction_id in ids - {expired}:
        record = await (await client.get(f"/predict/{prediction_id}")).json()
        assert record["status"] == "queued"

    await dead_letter(client, rds, "another poison")
    purged = await client.delete("/admin/dead-letters", headers=ADMIN)
    assert await purged.json() == {"purged": 1}
    assert (await (await client.get("/admin/dead-letters", headers=ADMIN)).json())["total"] == 0


async def test_a_replayed_job_gets_its_job_time_limit_from_the_replay(
    make_client: ClientFactory, rds: Redis
) -> None:
    # Given up on long ago (its submission is past JOB_TIMEOUT_SECONDS): replayed, it runs.
    client = await admin_client(make_client, job_timeout_seconds=30)
    prediction_id = await dead_letter(client, rds, "old poison")
    keys = client.server.app[state.PARTITIONS].of(prediction_id)
    await rds.hset(keys.record(prediction_id), "created_at", "1000000000")
    resp = await client.post(f"/admin/dead-letters/{prediction_id}/replay", headers=ADMIN)
    assert (await resp.json())["replayed"] is True
    worker = worker_for(client, "healthy", job=prediction_id)

    async def ended() -> Any:
        await worker.step()
        return (await rds.hget(keys.record(prediction_id), "status")) in (b"done", b"failed")

    await poll(ended)
    assert (await wait_final(client, prediction_id))["status"] == "done"


async def test_admin_routes_need_the_admin_key_and_are_off_without_one(
    make_client: ClientFactory,
) -> None:
    client = await admin_client(make_client, api_key="user-key")
    routes = [
        ("GET", "/admin/dead-letters"),
        ("POST", "/admin/dead-letters/replay"),
        ("POST", "/admin/dead-letters/00000000-0000-4000-8000-000000000000/replay"),
        ("DELETE", "/admin/dead-letters"),
    ]
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer user-key"}):
            denied = await client.request(method, path, headers=headers)
            assert denied.status == 401, (method, path, headers)
            assert denied.headers["WWW-Authenticate"] == "Bearer"
        allowed = await client.request(method, path, headers=ADMIN)
        assert allowed.status in (200, 404), (method, path, await allowed.text())
    unknown = await client.post(routes[2][1], headers=ADMIN)
    assert unknown.status == 404 and "error" in await unknown.json()
    bad = await client.get("/admin/dead-letters", params={"limit": "0"}, headers=ADMIN)
    assert bad.status == 400
    bad = await client.get("/admin/dead-letters", params={"after": "next"}, headers=ADMIN)
    assert bad.status == 400
    past = await client.get("/admin/dead-letters", params={"after": "9-1-0"}, headers=ADMIN)
    assert (await past.json())["items"] == [] and (await past.json())["next"] is None

    off = await make_client(model="tests.models:echo", workers=0)
    for method, path in routes:
        resp = await off.request(method, path, headers=ADMIN)
        assert resp.status == 403, (method, path)
        assert "ADMIN_API_KEY" in (await resp.json())["error"]
