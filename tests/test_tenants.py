"""Tenants of API_KEYS_FILE: each sees only its own jobs, its rate and queue quotas answer
429 with Retry-After and leave the others alone, the limits hold across replicas, the file
reloads without a restart, and a flooding tenant does not starve another (weighted turns);
on one node and on a cluster."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from service import state
from service.tenants import KeysFileError, parse_keys_file

from .helpers import ROOT, ClientFactory, figure, poll, scrape, worker_for

MODES = pytest.mark.modes("single", "cluster")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keys_file(path: Path, **tenants: dict[str, Any]) -> Path:
    """Writes a keys file: each tenant's key is its name + '-key', stored as its digest."""
    lines = []
    for name, limits in tenants.items():
        lines.append(f"[tenants.{name}]")
        lines.append(f'keys = ["{digest(name + "-key")}"]')
        lines += [f"{k} = {v}" for k, v in limits.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}-key"}


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
    ],
    ids=["clear key", "reserved", "name", "unknown field", "weight", "no keys", "twice", "toml"],
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
    # The API_KEY tenant keeps working, with its own jobs.
    resp = await submit_as(client, "old", "y", Authorization="Bearer old-key")
    assert resp.status == 202
    assert (await client.get(f"/predict/{mine}", headers=auth("nobody"))).status == 401


@MODES
async def test_idempotency_keys_are_each_tenants_own(
    make_client: ClientFactory, two_tenants: Path
) -> None:
    client = await make_client(model="tests.models:echo", workers=0, api_keys_file=str(two_tenants))
    ids = []
    for name in ("acme", "umbrella", "acme"):
        resp = await submit_as(client, name, "same", **{"Idempotency-Key": "order-1"})
        assert resp.status == 202
        ids.append((await resp.json())["prediction_id"])
    assert ids[0] == ids[2] != ids[1]


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
