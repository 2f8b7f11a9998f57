"""The dashboard's data (/dashboard/api/*): the same figures from Redis on every replica,
the latest jobs and a job's timeline, each key seeing only what it may, bounded in Redis.
The page itself, in a real browser: test_dashboard_browser.py."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from service.http import state
from service.observability import activity as act

from .helpers import (
    ASYNC,
    ClientFactory,
    auth,
    dead_letter,
    keys_file,
    poll,
    submit,
    wait_final,
)

ADMIN = {"Authorization": "Bearer root-key"}


async def overview(client: TestClient, **headers: str) -> dict[str, Any]:
    resp = await client.get("/dashboard/api/overview", headers=headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def flush(client: TestClient) -> None:
    """What the replica's flush task does every FLUSH_SECONDS, now."""
    app = client.server.app
    names = app[state.PARTITIONS].names
    await app[state.METRICS].activity.flush(app[state.REDIS], names, "test", {"workers": 1})


async def listed(client: TestClient, query: str = "", **headers: str) -> list[dict[str, Any]]:
    resp = await client.get("/dashboard/api/jobs" + query, headers=headers)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["items"]  # type: ignore[no-any-return]


@pytest.mark.modes("single", "cluster")
async def test_queued_jobs_show_by_priority_model_and_tenant_then_done_with_rates(
    make_client: ClientFactory,
) -> None:
    idle = await make_client(model="tests.models:echo", workers=0)
    ids = [await submit(idle, i) for i in range(4)]
    resp = await idle.post("/predict", json={"input": "hi", "priority": "high"}, headers=ASYNC)
    assert resp.status == 202
    ids.append((await resp.json())["prediction_id"])
    seen = await overview(idle)
    assert seen["scope"] == "all"
    assert seen["queue"]["total"] == seen["queue"]["queued"] == 5
    assert seen["queue"]["by_priority"] == {"high": 1, "normal": 4, "low": 0}
    assert seen["queue"]["by_model"] == {"default": 5}
    assert seen["queue"]["by_tenant"] == {"default": 5}
    assert seen["queue"]["oldest_seconds"] >= 0
    await flush(idle)
    seen = await overview(idle)
    assert sum(p["submitted"] * p["seconds"] for p in seen["series"]) == pytest.approx(5)
    assert seen["rates"]["submitted"] > 0
    assert [r["name"] for r in seen["replicas"]] == ["test"]

    worker = await make_client(model="tests.models:echo", consumer_name="other")
    for prediction_id in ids:
        assert (await wait_final(worker, prediction_id))["status"] == "done"
    await flush(worker)
    seen = await overview(idle)
    assert seen["queue"]["total"] == 0
    assert sum(p["done"] * p["seconds"] for p in seen["series"]) == pytest.approx(5)
    assert seen["rates"]["done"] > 0
    assert seen["latency"]["wait_p50"] is not None and seen["latency"]["run_p99"] is not None
    assert {j["id"] for j in await listed(idle, "?status=done")} == set(ids)
    assert await listed(idle, "?status=done&model=other") == []


async def test_the_flush_task_writes_on_its_own_and_a_stopping_replica_leaves(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(model="tests.models:echo")
    await wait_final(client, await submit(client, 1))
    names = client.server.app[state.PARTITIONS].names

    async def flushed() -> bool:
        return bool(await rds.lrange(names.ended(""), 0, -1))

    await poll(flushed, within=act.FLUSH_SECONDS * 3)
    assert await rds.hexists(names.replicas, "test")
    keys = await rds.keys(names.activity(0)[:-1] + "[0-9]*")
    assert keys, "no activity bucket written"
    for key in keys:  # every bucket expires within the hour kept
        assert 0 < await rds.ttl(key) <= act.KEPT_SECONDS + 1
    await client.close()
    assert not await rds.hexists(names.replicas, "test")


async def test_failures_are_listed_with_their_errors_and_a_lookup_shows_the_timeline(
    make_client: ClientFactory,
) -> None:
    client = await make_client(model="tests.models:Fragile")
    bad, good = await submit(client, "boom"), await submit(client, "fine")
    for prediction_id in (bad, good):
        await wait_final(client, prediction_id)
    await flush(client)
    (failure,) = await listed(client, "?status=failed")
    assert failure["id"] == bad and "exploded" in failure["error"]
    resp = await client.get(f"/dashboard/api/jobs/{bad}")
    job = await resp.json()
    assert job["status"] == "failed" and "exploded" in job["error"]
    assert job["attempts"] == 1
    events = [t["event"] for t in job["timeline"]]
    assert events[0] == "created" and events[-1] == "ended failed"
    assert any(e.startswith("started (attempt 1)") for e in events)
    times = [t["at"] for t in job["timeline"]]
    assert times == sorted(times)
    assert job["input"] == '"boom"'
    # A sync call with a failure counts, but has no record to list.
    resp = await client.post("/predict", json={"input": "boom"})
    assert resp.status == 500
    await flush(client)
    assert [j["id"] for j in await listed(client, "?status=failed")] == [bad]


async def test_an_unknown_or_malformed_id_is_not_found_and_bad_filters_are_400(
    make_client: ClientFactory,
) -> None:
    client = await make_client(model="tests.models:echo", workers=0)
    for raw in ("00000000-0000-4000-8000-000000000000", "nope"):
        resp = await client.get(f"/dashboard/api/jobs/{raw}")
        assert resp.status == 404
        assert "error" in await resp.json()
    for query in ("?status=lost", "?model=" + "m" * 201):
        resp = await client.get("/dashboard/api/jobs" + query)
        assert resp.status == 400, query
    for since in ("soon", "-1", "nan", "1e12"):
        resp = await client.get(f"/dashboard/api/overview?since={since}")
        assert resp.status == 400, since


async def test_queued_and_processing_lists_come_from_the_streams(
    make_client: ClientFactory,
) -> None:
    client = await make_client(model="tests.models:echo", workers=0)
    ids = [await submit(client, i) for i in range(3)]
    queued = await listed(client, "?status=queued")
    assert [j["id"] for j in queued] == ids  # oldest first
    assert await listed(client, "?status=processing") == []
    assert await listed(client, "?status=queued&model=nothing") == []


@pytest.mark.modes("single", "cluster")
async def test_a_dead_letter_shows_in_the_timeline_and_purges_alone(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(
        model="tests.models:echo", workers=0, max_deliveries=2, admin_api_key="root-key"
    )
    first, second = await dead_letter(client, rds, "a"), await dead_letter(client, rds, "b")
    job = await (await client.get(f"/dashboard/api/jobs/{first}")).json()
    assert job["dead_letter"]["reason"]
    assert any(t["event"].startswith("dead-lettered") for t in job["timeline"])
    assert (await client.delete(f"/admin/dead-letters/{first}")).status == 401
    resp = await client.delete(f"/admin/dead-letters/{first}", headers=ADMIN)
    assert await resp.json() == {"prediction_id": first, "purged": True}
    resp = await client.delete(f"/admin/dead-letters/{first}", headers=ADMIN)
    assert await resp.json() == {"prediction_id": first, "purged": False}
    page = await (await client.get("/admin/dead-letters", headers=ADMIN)).json()
    assert [d["prediction_id"] for d in page["items"]] == [second]
    job = await (await client.get(f"/dashboard/api/jobs/{first}")).json()
    assert job["dead_letter"] is None and job["status"] == "failed"
    unknown = "00000000-0000-4000-8000-000000000000"
    assert (await client.delete(f"/admin/dead-letters/{unknown}", headers=ADMIN)).status == 404
    # A letter whose record expired: purged by its entry (from the list) alone.
    await rds.delete(client.server.app[state.PARTITIONS].record(second))
    resp = await client.delete(f"/admin/dead-letters/{second}", headers=ADMIN)
    assert resp.status == 404
    (letter,) = page["items"]
    for entry in ("nope", "1-2-3"):
        resp = await client.delete(f"/admin/dead-letters/{second}?entry={entry}", headers=ADMIN)
        assert resp.status == 400, entry
    # Another job's letter is not this one's to purge.
    resp = await client.delete(
        f"/admin/dead-letters/{first}?entry={letter['entry']}", headers=ADMIN
    )
    assert await resp.json() == {"prediction_id": first, "purged": False}
    resp = await client.delete(
        f"/admin/dead-letters/{second}?entry={letter['entry']}", headers=ADMIN
    )
    assert await resp.json() == {"prediction_id": second, "purged": True}
    assert (await (await client.get("/admin/dead-letters", headers=ADMIN)).json())["total"] == 0


@pytest.fixture
def tenants(tmp_path: Path) -> Path:
    return keys_file(tmp_path / "keys.toml", acme={"rate": 50, "max_queued": 10}, umbrella={})


async def test_a_tenant_sees_its_own_jobs_and_figures_alone(
    make_client: ClientFactory, tenants: Path
) -> None:
    client = await make_client(
        model="tests.models:echo", workers=0, api_keys_file=str(tenants), admin_api_key="root-key"
    )
    mine, theirs = [], []
    for _ in range(2):
        resp = await client.post("/predict", json={"input": 1}, headers={**ASYNC, **auth("acme")})
        mine.append((await resp.json())["prediction_id"])
    resp = await client.post("/predict", json={"input": 2}, headers={**ASYNC, **auth("umbrella")})
    theirs.append((await resp.json())["prediction_id"])
    await flush(client)

    acme = await overview(client, **auth("acme"))
    assert acme["scope"] == "acme"
    assert acme["queue"]["total"] == 2
    assert "by_tenant" not in acme["queue"] and "by_model" not in acme["queue"]
    # Of the replicas, a tenant sees how many serve, not which.
    assert acme["replicas"] == [] and acme["replicas_alive"] == 1
    assert sum(p["submitted"] * p["seconds"] for p in acme["series"]) == pytest.approx(2)
    everything = await overview(client, **ADMIN)
    assert everything["scope"] == "all" and everything["queue"]["total"] == 3
    assert everything["queue"]["by_tenant"] == {"acme": 2, "default": 0, "umbrella": 1}

    ids = [j["id"] for j in await listed(client, "?status=queued", **auth("acme"))]
    assert ids == mine
    resp = await client.get(f"/dashboard/api/jobs/{theirs[0]}", headers=auth("acme"))
    assert resp.status == 404
    resp = await client.get(f"/dashboard/api/jobs/{theirs[0]}", headers=ADMIN)
    assert resp.status == 200 and (await resp.json())["tenant"] == "umbrella"

    seen = await (await client.get("/dashboard/api/tenants", headers=auth("acme"))).json()
    (only,) = seen["items"]
    assert only["name"] == "acme" and only["queued"] == 2 and only["max_queued"] == 10
    assert only["rate"] == 50 and 0 < only["requests_allowed_now"] <= only["burst"]
    seen = await (await client.get("/dashboard/api/tenants", headers=ADMIN)).json()
    assert sorted(t["name"] for t in seen["items"]) == ["acme", "umbrella"]
    umbrella = next(t for t in seen["items"] if t["name"] == "umbrella")
    # No quota of its own: MAX_QUEUE bounds it.
    assert umbrella["max_queued"] == client.server.app[state.SETTINGS].max_queue
    assert umbrella["queued"] == 1 and umbrella["rate"] is None

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic acme-key"}):
        for path in ("overview", "jobs", f"jobs/{mine[0]}", "tenants"):
            resp = await client.get(f"/dashboard/api/{path}", headers=headers)
            assert resp.status == 401, (path, headers)
    # The page and its assets are public: the page asks for a key itself.
    assert (await client.get("/dashboard")).status == 200


async def test_the_page_and_its_assets_are_served_from_here_with_a_strict_policy(
    make_client: ClientFactory,
) -> None:
    client = await make_client(model="tests.models:echo", workers=0)
    resp = await client.get("/dashboard")
    assert resp.status == 200 and resp.content_type == "text/html"
    policy = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    page = await resp.text()
    assets = re.findall(r'(?:src|href)="(/dashboard/assets/[^"]+)"', page)
    assert len(assets) == 4
    for asset in assets:
        got = await client.get(asset)
        assert got.status == 200, asset
        assert len(await got.read()) > 1000 or asset.endswith(".css")
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page), (
        "the page loads nothing from elsewhere"
    )
    assert (await client.get("/dashboard/assets/../settings.py")).status == 404
    assert (await client.get("/dashboard/assets/nothing.js")).status == 404


async def test_dashboard_false_turns_it_off(make_client: ClientFactory) -> None:
    client = await make_client(model="tests.models:echo", workers=0, dashboard=False)
    for path in ("/dashboard", "/dashboard/assets/dashboard.js", "/dashboard/api/overview"):
        resp = await client.get(path)
        assert resp.status == 404, path


async def test_the_lists_kept_in_redis_stay_at_their_length(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(model="tests.models:echo", workers=0)
    activity = client.server.app[state.METRICS].activity
    for i in range(act.ENDED_KEPT + 50):
        activity.ended(f"id-{i}", "echo", "", "failed", error="x" * 1000)
    await flush(client)
    await flush(client)  # a second flush, with nothing new, changes nothing
    names = client.server.app[state.PARTITIONS].names
    assert await rds.llen(names.ended("")) == act.ENDED_KEPT
    assert await rds.llen(names.failures("")) == act.FAILED_KEPT
    newest = await listed(client, "?status=failed")
    assert newest[0]["id"] == f"id-{act.ENDED_KEPT + 49}"
    assert len(newest[0]["error"]) == 500  # errors are cut short


def test_quantiles_fall_within_their_bins() -> None:
    from service.observability.overview import quantile

    counts = {"w0": 50, "w5": 50, f"r{len(act.BINS)}": 3}
    assert quantile(counts, "w", 0.5) == pytest.approx(act.BINS[0])
    low, high = act.BINS[4], act.BINS[5]
    assert quantile(counts, "w", 0.99) == pytest.approx(low + (high - low) * 49 / 50)
    assert quantile(counts, "r", 0.5) == act.BINS[-1]  # past the last bound: that bound
    assert quantile({}, "w", 0.5) is None


async def test_a_flush_that_fails_keeps_its_counts_for_the_next(rds: Redis) -> None:
    from service.redis.embedded import free_port
    from service.redis.keys import Names

    activity, names = act.Activity(), Names()
    activity.submitted("", 3)
    activity.ended("some-id", "m", "", "done", waited=0.2, ran=0.02)
    away = Redis(port=free_port(), socket_connect_timeout=1)
    with pytest.raises(Exception):  # noqa: B017 (whichever connection error redis-py raises)
        await activity.flush(away, names, "r", {})
    await away.aclose()
    activity.ended("other-id", "m", "", "failed", error="no")
    await activity.flush(rds, names, "r", {})
    bucket = int(time.time()) // act.BUCKET_SECONDS * act.BUCKET_SECONDS
    counted: dict[bytes, bytes] = {}
    for start in (bucket - act.BUCKET_SECONDS, bucket):  # the flush may straddle two
        for field, value in (await rds.hgetall(names.activity(start))).items():
            counted[field] = str(int(counted.get(field, b"0")) + int(value)).encode()
    assert counted[b"|sub"] == b"3" and counted[b"|done"] == b"1" and counted[b"|failed"] == b"1"
    assert [j["id"] for j in map(orjson.loads, await rds.lrange(names.ended(""), 0, -1))] == [
        "other-id",
        "some-id",
    ]


async def test_each_tenant_lists_its_own_ended_jobs_and_api_key_is_the_default_one(
    make_client: ClientFactory, tenants: Path
) -> None:
    client = await make_client(
        model="tests.models:Fragile",
        api_keys_file=str(tenants),
        api_key="plain-key",
        admin_api_key="root-key",
    )
    ids: dict[str, str] = {}
    for who, value in (("acme", "boom"), ("umbrella", "fine"), ("plain", "boom")):
        headers = {**ASYNC, **auth(who)}
        resp = await client.post("/predict", json={"input": value}, headers=headers)
        ids[who] = (await resp.json())["prediction_id"]
    for who, prediction_id in ids.items():
        body = await (
            await client.get(f"/predict/{prediction_id}?wait=10", headers=auth(who))
        ).json()
        assert body["status"] in ("done", "failed"), body
    await flush(client)
    for who in ("acme", "umbrella", "plain"):
        for query in ("", "?status=failed"):
            seen = [j["id"] for j in await listed(client, query, **auth(who))]
            assert seen == ([ids[who]] if query == "" or who != "umbrella" else []), (who, query)
    everything = {j["id"] for j in await listed(client, "", **ADMIN)}
    assert everything == set(ids.values())
    plain = await overview(client, **auth("plain"))  # API_KEY: the default tenant's figures
    assert plain["scope"] == "default"
    assert sum(p["submitted"] * p["seconds"] for p in plain["series"]) == pytest.approx(1)


async def test_queued_and_running_are_told_apart_and_a_cancel_is_counted(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(model="tests.models:echo", workers=0)
    ids = [await submit(client, i) for i in range(4)]
    keys = client.server.app[state.PARTITIONS][0]
    await rds.xreadgroup(keys.group, "elsewhere", {keys.stream: ">"}, count=2)  # two run
    running = [j["id"] for j in await listed(client, "?status=processing")]
    queued = [j["id"] for j in await listed(client, "?status=queued")]
    assert (running, queued) == (ids[:2], ids[2:])
    seen = await overview(client)
    assert (seen["queue"]["queued"], seen["queue"]["running"]) == (2, 2)
    # The oldest queued is the third job, not the first (running): its age, not theirs.
    oldest = time.time() - int((await rds.xrange(keys.stream, count=3))[2][0].split(b"-")[0]) / 1000
    assert seen["queue"]["oldest_seconds"] <= oldest + 0.5
    assert (await client.delete(f"/predict/{ids[3]}")).status == 200
    await flush(client)
    (canceled,) = await listed(client, "?status=canceled")
    assert canceled["id"] == ids[3]
    assert (await overview(client))["rates"]["canceled"] > 0


async def test_redis_away_is_a_503_and_the_figures_come_back(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    from service.redis.embedded import RedisServer, free_port

    server = RedisServer(tmp_path / "redis", free_port())
    url = server.start()
    try:
        client = await make_client(redis_url=url, model="tests.models:echo", workers=0)
        await submit(client, 1)
        assert (await overview(client))["queue"]["total"] == 1
        server.stop()
        for path in ("overview", "jobs", "jobs?status=queued", "tenants"):
            resp = await client.get(f"/dashboard/api/{path}")
            assert resp.status == 503, path
            assert "unavailable" in (await resp.json())["error"]
        server.start()

        async def back() -> Any:
            resp = await client.get("/dashboard/api/overview")
            return resp.status == 200 and (await resp.json())["queue"]["total"] == 1

        await poll(back)
    finally:
        server.stop()


async def test_a_full_list_keeps_the_newest_across_a_failed_flush(rds: Redis) -> None:
    from service.redis.embedded import free_port
    from service.redis.keys import Names

    activity, names = act.Activity(), Names()
    for i in range(act.ENDED_KEPT):
        activity.ended(f"old-{i}", "m", "", "done")
    away = Redis(port=free_port(), socket_connect_timeout=1)
    with pytest.raises(Exception):  # noqa: B017
        await activity.flush(away, names, "r", {})
    await away.aclose()
    activity.ended("newest", "m", "", "done")
    await activity.flush(rds, names, "r", {})
    listed_ids = [orjson.loads(raw)["id"] for raw in await rds.lrange(names.ended(""), 0, -1)]
    assert len(listed_ids) == act.ENDED_KEPT
    assert listed_ids[0] == "newest" and "old-0" not in listed_ids
