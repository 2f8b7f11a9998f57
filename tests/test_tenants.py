"""Tenants of API_KEYS_FILE: each sees only its own jobs, its rate and queue quotas answer
429 with Retry-After and leave the others alone, the limits hold across replicas, the file
reloads without a restart, and a flooding tenant does not starve another (weighted turns);
on one node and on a cluster."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from service.http import state
from service.http.tenants import KeysFileError, parse_keys_file

from .helpers import (
    ROOT,
    ClientFactory,
    auth,
    digest,
    figure,
    keys_file,
    poll,
    scrape,
    scrape_until,
    worker_for,
)

MODES = pytest.mark.modes("single", "cluster")


async def submit_as(client: TestClient, name: str, value: Any = "x", **headers: str) -> Any:
    return await client.post(
        "/predict", json={"input": value}, headers={"Async-Mode": "true", **auth(name), **headers}
    )


async def queued_id(client: TestClient, name: str, value: Any = "x") -> str:
    resp = await submit_as(client, name, value)
    assert resp.status == 202, await resp.text()
    return (await resp.json())["prediction_id"]  # type: ignore[no-any-return]


@pytest.fixture
def two_tenants(tmp_path: Path) -> Path:
    return keys_file(tmp_path / "keys.toml", acme={}, umbrella={})


# -- the file ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[tenants.a]\nkeys = ["secret"]\n', "SHA-256 digest"),
        (f'[tenants.default]\nkeys = ["{digest("k")}"]\n', "'default'"),
        (f'[tenants."Bad Name"]\nkeys = ["{digest("k")}"]\n', "tenant name"),
        (f'[tenants.a]\nkeys = ["{digest("k")}"]\nrate_limit = 3\n', "rate_limit"),
        (f'[tenants.a]\nkeys = ["{digest("k")}"]\nweight = 0\n', "weight"),
        ("[tenants.a]\nkeys = []\n", "keys"),
        (
            f'[tenants.a]\nkeys = ["{digest("k")}"]\n[tenants.b]\nkeys = ["{digest("k")}"]\n',
            "twice",
        ),
        ("[tenants.a\n", "Expected"),
        (f'[tenants.a]\nkeys = ["{digest("k")}"]\nrate = 1e-300\n', "at least 0.001"),
        (f'[tenants.a]\nkeys = ["{digest("k")}"]\nrate = 0.0009\n', "at least 0.001"),
        (f'[tenants.a]\nkeys = ["{digest("k")}"]\nrate = 1e7\n', "less than or equal"),
        (f'[tenants.a]\nkeys = ["{digest("k")}"]\nrate = nan\n', "finite"),
        (f'[tenants.a]\nkeys = ["{digest("k")}"]\nburst = 1000001\n', "less than or equal"),
        (f'[tenants.a]\nkeys = ["{digest("k")}"]\nmax_queued = 1e12\n', "max_queued"),
    ],
    ids=[
        "clear key",
        "reserved",
        "name",
        "unknown field",
        "weight",
        "no keys",
        "twice",
        "toml",
        "tiny rate",
        "rate under the least",
        "huge rate",
        "nan rate",
        "huge burst",
        "huge quota",
    ],
)
def test_a_bad_keys_file_is_refused_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(KeysFileError, match=says):
        parse_keys_file(text)


def test_the_file_holds_digests_and_limits() -> None:
    text = f'[tenants.a]\nkeys = ["SHA256:{digest("k").upper()}"]\nrate = 2.5\nmax_queued = 7\n'
    (tenant,) = parse_keys_file(text).values()
    assert (tenant.name, tenant.rate, tenant.burst, tenant.max_queued, tenant.weight) == (
        "a",
        2.5,
        3,  # the burst defaults to the rate, rounded up
        7,
        1,
    )


async def test_a_bad_keys_file_stops_the_start_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "keys.toml"
    bad.write_text('[tenants.a]\nkeys = ["plain-key"]\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        env={**os.environ, "API_KEYS_FILE": str(bad), "MODEL": "tests.models:echo"},
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert err.decode().startswith("error: cannot start: API_KEYS_FILE:"), err.decode()


# -- isolation --------------------------------------------------------------------------------


@MODES
async def test_a_tenant_sees_only_its_own_jobs(
    make_client: ClientFactory, two_tenants: Path
) -> None:
    client = await make_client(
        model="tests.models:echo", workers=0, api_keys_file=str(two_tenants), api_key="old-key"
    )
    mine = await queued_id(client, "acme")
    unknown = await client.get(
        "/predict/00000000-0000-4000-8000-000000000000", headers=auth("acme")
    )
    assert unknown.status == 404
    as_unknown = await unknown.json()
    for headers in (auth("umbrella"), {"Authorization": "Bearer old-key"}):
        for method, path in (
            ("GET", f"/predict/{mine}"),
            ("GET", f"/predict/{mine}?wait=5"),
            ("DELETE", f"/predict/{mine}"),
            ("GET", f"/predict/{mine}/events"),
        ):
            resp = await client.request(method, path, headers=headers)
            assert resp.status == 404, (method, path, await resp.text())
            assert await resp.json() == as_unknown
    resp = await client.get(f"/predict/{mine}", headers=auth("acme"))
    assert resp.status == 200 and (await resp.json())["status"] == "queued"
    # The owner cancels it; nobody else did.
    assert (await client.delete(f"/predict/{mine}", headers=auth("acme"))).status == 200
    # The API_KEY tenant keeps working, with its own jobs, which no named tenant reaches.
    resp = await submit_as(client, "old", "y", Authorization="Bearer old-key")
    assert resp.status == 202
    defaults = (await resp.json())["prediction_id"]
    for method, path in (
        ("GET", f"/predict/{defaults}"),
        ("GET", f"/predict/{defaults}?wait=5"),
        ("DELETE", f"/predict/{defaults}"),
        ("GET", f"/predict/{defaults}/events"),
    ):
        resp = await client.request(method, path, headers=auth("acme"))
        assert resp.status == 404, (method, path, await resp.text())
        assert await resp.json() == as_unknown
    owned = await client.get(f"/predict/{defaults}", headers={"Authorization": "Bearer old-key"})
    assert (await owned.json())["status"] == "queued", "not canceled by another tenant"
    assert (await client.get(f"/predict/{mine}", headers=auth("nobody"))).status == 401


async def test_a_key_is_matched_by_its_whole_digest(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    # Digests that differ from the key's in their last or their first byte alone: the key
    # is refused (the whole digest is compared, not a prefix or a suffix of it).
    real = digest("acme-key")
    near = [
        real[:-2] + ("00" if real[-2:] != "00" else "01"),
        ("00" if real[:2] != "00" else "01") + real[2:],
    ]
    path = tmp_path / "keys.toml"
    path.write_text(f'[tenants.acme]\nkeys = ["{near[0]}", "{near[1]}"]\n')
    client = await make_client(model="tests.models:echo", workers=0, api_keys_file=str(path))
    assert (await client.get("/models", headers=auth("acme"))).status == 401
    path.write_text(f'[tenants.acme]\nkeys = ["{real}"]\n')
    await client.server.app[state.TENANTS].reload(force=True)
    assert (await client.get("/models", headers=auth("acme"))).status == 200


async def test_tenant_keys_never_open_the_admin_routes(
    make_client: ClientFactory, two_tenants: Path
) -> None:
    client = await make_client(
        model="tests.models:echo",
        workers=0,
        api_keys_file=str(two_tenants),
        api_key="old-key",
        admin_api_key="root-key",
    )
    for headers in (auth("acme"), {"Authorization": "Bearer old-key"}, {}):
        for method, path in (
            ("GET", "/admin/dead-letters"),
            ("POST", "/admin/dead-letters/replay"),
            ("DELETE", "/admin/dead-letters"),
        ):
            resp = await client.request(method, path, headers=headers)
            assert resp.status == 401, (method, path, headers)
    ok = await client.get("/admin/dead-letters", headers={"Authorization": "Bearer root-key"})
    assert ok.status == 200
    # And the admin key is no tenant's key: it opens no prediction route.
    assert (await client.get("/models", headers={"Authorization": "Bearer root-key"})).status == 401


@MODES
async def test_the_owner_waiting_for_its_job_gets_it_when_it_ends(
    make_client: ClientFactory, two_tenants: Path
) -> None:
    # The record a finishing worker hands to the waiters of its own replica names the
    # job's tenant: the owner's wait (?wait=, or Prefer: wait) answers the job, not a 404.
    client = await make_client(model="tests.models:paced", api_keys_file=str(two_tenants))
    for attempt in range(3):
        mine = await queued_id(client, "acme", f"job {attempt}")
        resp = await client.get(f"/predict/{mine}?wait=10", headers=auth("acme"))
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["status"] == "done"
    resp = await client.post(
        "/predict",
        json={"input": "waited"},
        headers={"Async-Mode": "true", "Prefer": "wait=10", **auth("umbrella")},
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["output"]["result"] == "waited"


@MODES
async def test_idempotency_keys_are_each_tenants_own(
    make_client: ClientFactory, two_tenants: Path
) -> None:
    client = await make_client(
        model="tests.models:echo", workers=0, api_keys_file=str(two_tenants), api_key="old-key"
    )
    ids = []
    for name in ("acme", "umbrella", "acme"):
        resp = await submit_as(client, name, "same", **{"Idempotency-Key": "order-1"})
        assert resp.status == 202
        ids.append((await resp.json())["prediction_id"])
    assert ids[0] == ids[2] != ids[1]
    # The default tenant (API_KEY) keying its job as another tenant's key would be stored
    # gets a job of its own, never acme's id.
    for key in ("acme/order-1", "acme order-1", "acme order-1 0"):
        resp = await submit_as(
            client, "old", "same", Authorization="Bearer old-key", **{"Idempotency-Key": key}
        )
        assert resp.status in (202, 400), await resp.text()
        if resp.status == 202:
            assert (await resp.json())["prediction_id"] not in ids, key


# -- quotas -----------------------------------------------------------------------------------


@MODES
async def test_over_its_rate_a_tenant_gets_429_on_every_replica_and_others_do_not(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    path = keys_file(tmp_path / "keys.toml", slow={"rate": 0.2, "burst": 3}, acme={})
    replicas = [
        await make_client(model="tests.models:echo", workers=0, api_keys_file=str(path))
        for _ in range(2)
    ]
    statuses = [
        (await replicas[i % 2].get("/models", headers=auth("slow"))).status for i in range(3)
    ]
    assert statuses == [200, 200, 200], "the burst"
    over = await replicas[1].get("/models", headers=auth("slow"))
    assert over.status == 429
    assert 1 <= int(over.headers["Retry-After"]) <= 5
    assert "0.2 requests per second" in (await over.json())["error"]
    assert (
        await replicas[0].post("/predict", json={"input": "x"}, headers=auth("slow"))
    ).status == 429
    for replica in replicas:
        assert (await replica.get("/models", headers=auth("acme"))).status == 200
    text = await scrape(replicas[1])
    assert figure(text, "tenant_requests_total", tenant="slow", status="429") == 1
    assert figure(text, "tenant_requests_total", tenant="slow", status="200") == 1


async def test_the_least_and_the_greatest_rates_hold_at_their_edges(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    path = keys_file(
        tmp_path / "keys.toml",
        trickle={"rate": 0.001, "burst": 1},
        flood={"rate": 1_000_000, "burst": 1_000_000},
    )
    client = await make_client(model="tests.models:echo", workers=0, api_keys_file=str(path))
    assert (await client.get("/models", headers=auth("trickle"))).status == 200
    over = await client.get("/models", headers=auth("trickle"))
    assert over.status == 429
    assert over.headers["Retry-After"] == "1000", "one token in 1,000 s"
    statuses = {(await client.get("/models", headers=auth("flood"))).status for _ in range(50)}
    assert statuses == {200}


@MODES
async def test_over_its_queue_quota_a_tenant_gets_429_and_others_still_queue(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    path = keys_file(tmp_path / "keys.toml", small={"max_queued": 2}, acme={})
    client = await make_client(
        model="tests.models:echo",
        workers=0,
        api_keys_file=str(path),
        queue_partitions=1,
        max_queue=1000,
    )
    for _ in range(2):
        await queued_id(client, "small")
    full = await submit_as(client, "small")
    assert full.status == 429 and full.headers["Retry-After"] == "1"
    assert "'small' may have 2 jobs queued" in (await full.json())["error"]
    bulk = await client.post("/predict/batch", json={"inputs": ["a"]}, headers={**auth("small")})
    assert bulk.status == 429
    for i in range(5):  # the other tenant is not bounded by small's quota
        await queued_id(client, "acme", i)

    async def gauges() -> bool:
        text = await scrape(client)
        return (
            figure(text, "tenant_queued_jobs", tenant="small") == 2
            and figure(text, "tenant_queued_jobs", tenant="acme") == 5
        )

    await poll(gauges)


# -- fair share -------------------------------------------------------------------------------


@MODES
@pytest.mark.parametrize("weights", [(1, 1), (3, 1)])
async def test_a_flooding_tenant_does_not_starve_another(
    make_client: ClientFactory, tmp_path: Path, weights: tuple[int, int]
) -> None:
    path = keys_file(
        tmp_path / "keys.toml", flood={"weight": weights[0]}, quiet={"weight": weights[1]}
    )
    client = await make_client(
        model="tests.models:echo", workers=0, api_keys_file=str(path), queue_partitions=1
    )
    flood = await client.post(
        "/predict/batch", json={"inputs": list(range(200))}, headers={**auth("flood")}
    )
    assert flood.status == 202
    quiet = await queued_id(client, "quiet")
    worker = worker_for(client, "w")  # batches of 8
    assert await worker.step() == 0  # its own pending entries: none
    steps = 0
    while True:
        steps += 1
        await worker.step()
        body = await (await client.get(f"/predict/{quiet}", headers=auth("quiet"))).json()
        if body["status"] == "done":
            break
        assert steps <= sum(weights), f"quiet's job still {body['status']} after {steps} batches"


# -- reload -----------------------------------------------------------------------------------


@MODES
async def test_the_keys_file_reloads_on_sighup_and_on_change(
    make_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = keys_file(tmp_path / "keys.toml", acme={})
    client = await make_client(
        model="tests.models:echo",
        api_keys_file=str(path),
        api_keys_poll_seconds=3600,
        queue_partitions=1,
    )
    assert (await client.get("/models", headers=auth("newco"))).status == 401
    keys_file(path, acme={}, newco={})
    os.kill(os.getpid(), signal.SIGHUP)

    async def admitted() -> bool:
        return (await client.get("/models", headers=auth("newco"))).status == 200

    await poll(admitted)
    # The workers read the new tenant's streams: its job runs.
    job = await queued_id(client, "newco", "hello")

    async def done() -> bool:
        body = await (await client.get(f"/predict/{job}", headers=auth("newco"))).json()
        return body["status"] == "done"

    await poll(done)
    # A file that does not parse changes nothing.
    path.write_text("[tenants.acme\n")
    os.kill(os.getpid(), signal.SIGHUP)

    async def refused() -> bool:
        return any("keys file not reloaded" in r.getMessage() for r in caplog.records)

    await poll(refused)
    assert (await client.get("/models", headers=auth("newco"))).status == 200


@MODES
async def test_a_tenant_taken_out_of_the_file_has_its_queued_jobs_run_after_a_restart(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    path = keys_file(tmp_path / "keys.toml", acme={}, umbrella={})
    before = await make_client(model="tests.models:echo", workers=0, api_keys_file=str(path))
    jobs = [await queued_id(before, "umbrella", i) for i in range(3)]
    await before.close()
    keys_file(path, acme={})  # umbrella is gone from the file; its jobs are still queued
    api = await make_client(model="tests.models:echo", workers=0, api_keys_file=str(path))
    text = await scrape_until(api, queue_backlog=3)
    assert figure(text, "tenant_queued_jobs", tenant="umbrella") == 3
    worker = await make_client(
        model="tests.models:echo", api_keys_file=str(path), consumer_name="after"
    )

    async def all_done() -> bool:
        records = [await api.server.app[state.RESULTS].get(job) for job in jobs]
        return all(r is not None and r.status == "done" for r in records)

    await poll(all_done)
    assert worker.server.app[state.PARTITIONS].tenants.keys() >= {"acme", "umbrella"}
    await scrape_until(api, queue_backlog=0)


async def test_the_keys_file_is_polled(make_client: ClientFactory, tmp_path: Path) -> None:
    path = keys_file(tmp_path / "keys.toml", acme={})
    client = await make_client(
        model="tests.models:echo", workers=0, api_keys_file=str(path), api_keys_poll_seconds=0.05
    )
    keys_file(path, newco={})
    os.utime(path, (1, 1))  # a new modification time, whatever the clock's resolution

    async def swapped() -> bool:
        return (await client.get("/models", headers=auth("newco"))).status == 200

    await poll(swapped)
    assert (await client.get("/models", headers=auth("acme"))).status == 401


async def test_the_spec_says_tenants_may_get_429(
    make_client: ClientFactory, two_tenants: Path
) -> None:
    client = await make_client(model="tests.models:echo", workers=0, api_keys_file=str(two_tenants))
    spec = await (await client.get("/docs/swagger.json")).json()
    read = spec["paths"]["/predict/{prediction_id}"]["get"]
    assert read["security"] == [{"bearer": []}]
    assert read["responses"]["429"] == {"$ref": "#/components/responses/RateLimited"}
    assert "429" not in spec["paths"]["/health/live"]["get"]["responses"]
    plain = await make_client(model="tests.models:echo", workers=0, api_key="k")
    spec = await (await plain.get("/docs/swagger.json")).json()
    assert "429" not in spec["paths"]["/predict/{prediction_id}"]["get"]["responses"]


@MODES
async def test_a_replayed_dead_letter_goes_back_on_its_tenants_stream(
    make_client: ClientFactory, rds: Redis, two_tenants: Path
) -> None:
    client = await make_client(
        model="tests.models:echo",
        workers=0,
        max_deliveries=1,
        admin_api_key="root-key",
        api_keys_file=str(two_tenants),
    )
    prediction_id = await queued_id(client, "acme", "poison")
    keys = client.server.app[state.PARTITIONS].of(prediction_id).of_tenant("acme")
    # One delivery started and never finished (its consumer died): the next is refused.
    await rds.hset(keys.record(prediction_id), mapping={"status": "processing", "attempts": 1})
    await rds.xreadgroup(keys.group, "dead-consumer", {keys.stream: ">"}, count=100)
    worker = worker_for(client, "rescuer", visibility_timeout=0.01, job=prediction_id)

    async def given_up() -> bool:
        await worker.step()
        return await rds.hget(keys.record(prediction_id), "status") == b"failed"

    await poll(given_up)
    replay = await client.post(
        "/admin/dead-letters/replay", headers={"Authorization": "Bearer root-key"}
    )
    assert await replay.json() == {"replayed": 1, "gone": 0}
    assert [f[b"id"] for _, f in await rds.xrange(keys.stream)] == [prediction_id.encode()]
    plain = keys.of_tenant("")
    assert not await rds.exists(plain.stream) or await rds.xlen(plain.stream) == 0
    body = await (await client.get(f"/predict/{prediction_id}", headers=auth("acme"))).json()
    assert body["status"] == "queued"
