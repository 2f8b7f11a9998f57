"""Real processes and a real redis-server that goes away and comes back on the same port."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.background import make_worker
from service.redis import connection
from service.redis.connection import connect
from service.redis.embedded import RedisServer, free_port
from service.redis.url import parse as parse_redis_url

from .helpers import GROUP, KEYS, STREAM, ClientFactory, poll, submit, wait_final

ROOT = Path(__file__).resolve().parent.parent


async def test_a_redis_outage_is_503_then_everything_works_again(
    make_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path / "redis", free_port())
    url = server.start()
    try:
        client = await make_client(redis_url=url, model="tests.models:echo", read_block_ms=100)
        assert (await wait_final(client, await submit(client, "before")))["status"] == "done"
        caplog.set_level(logging.WARNING, logger="service.jobs.worker")

        server.stop()
        resp = await client.post("/predict", json={"input": 1}, headers={"Async-Mode": "true"})
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert "unavailable" in (await resp.json())["error"]
        got = await client.get("/predict/00000000-0000-4000-8000-000000000000")
        assert got.status == 503
        ready = await client.get("/health/ready")
        assert ready.status == 503
        assert (await ready.json())["checks"]["redis"].startswith("unreachable")
        assert (await client.post("/predict", json={"input": 2})).status == 200, "sync still works"

        server.start()  # same port, same data folder

        async def accepted() -> Any:
            resp = await client.post(
                "/predict", json={"input": "after"}, headers={"Async-Mode": "true"}
            )
            return resp.status == 202 and (await resp.json())["prediction_id"]

        prediction_id = await poll(accepted)
        assert (await wait_final(client, prediction_id))["status"] == "done"
        outage_lines = [
            r
            for r in caplog.records
            if "Redis is unreachable" in r.getMessage() and r.name == "service.jobs.worker"
        ]
        assert len(outage_lines) == 1, "one line per outage, not per attempt"
    finally:
        server.stop()


async def test_entries_of_a_read_whose_answer_was_lost_run_after_the_outage(
    make_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path / "redis", free_port())
    url = server.start()
    try:
        client = await make_client(redis_url=url, model="tests.models:echo", workers=0)
        worker = make_worker(client.server.app, "w", block_ms=50, visibility_timeout=60)
        assert await worker.step() == 0  # its own pending entries: none
        prediction_id = await submit(client, "delivered, answer lost")
        # A read delivered it to this worker, and the answer never arrived: it is pending
        # on the worker's consumer, and idle for far less than the visibility timeout.
        async with Redis.from_url(url) as rds:
            await rds.xreadgroup(GROUP, "w", {STREAM: ">"}, count=1)
        caplog.set_level(logging.WARNING, logger="service.jobs.worker")
        running = asyncio.create_task(worker.run())
        server.stop()

        async def outage_seen() -> bool:
            return any("unreachable" in r.getMessage() for r in caplog.records)

        await poll(outage_seen)
        server.start()
        assert (await wait_final(client, prediction_id))["status"] == "done"
        worker.stop()
        await running
    finally:
        server.stop()


async def _serve(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", cwd=ROOT, env={**os.environ, **env}
    )


async def test_a_hung_redis_is_a_timeout_and_the_client_recovers(tmp_path: Path) -> None:
    # A Redis that stops answering (SIGSTOP) without closing its sockets must end each call
    # in a timeout (then 503s and worker backoff), for a small command and for one too big
    # for the socket buffers, and the same client works again once Redis does.
    server = RedisServer(tmp_path / "redis", free_port())
    client = await connect(parse_redis_url(server.start()), socket_timeout=0.5)
    pid = server.pid
    assert pid is not None
    try:
        assert await client.set("k", "v")
        os.kill(pid, signal.SIGSTOP)
        for value in (b"small", b"x" * (32 << 20)):
            started = asyncio.get_running_loop().time()
            with pytest.raises((RedisTimeoutError, RedisConnectionError)):
                await client.set("k", value)
            assert asyncio.get_running_loop().time() - started < 10
        os.kill(pid, signal.SIGCONT)
        assert await poll(lambda: client.set("k", "back"))
        assert await client.get("k") == b"back"
    finally:
        os.kill(pid, signal.SIGCONT)
        await client.aclose()
        server.stop()


async def test_sigterm_finishes_in_flight_work_and_exits_0(
    make_client: ClientFactory, redis_url: str, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"  # which calls the served replica started (its model's)
    api = await make_client(workers=0, model="tests.models:journaled")
    port = free_port()
    proc = await _serve(
        {
            "REDIS_URL": redis_url,
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "MODEL": "tests.models:journaled",
            "WORKERS": "1",
            "SHUTDOWN_GRACE_SECONDS": "15",
            "TEST_JOURNAL": str(journal),
        }
    )
    base = f"http://127.0.0.1:{port}"

    async def started(tag: str) -> bool:
        return journal.exists() and f"start {tag} " in journal.read_text()

    try:
        async with aiohttp.ClientSession() as session:

            async def up() -> bool:
                try:
                    async with session.get(f"{base}/health/ready") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await poll(up, within=30)
            queued = await submit(api, {"tag": "queued", "seconds": 2})
            await poll(lambda: started("queued"))
            job = {"input": {"tag": "sync", "seconds": 2}}
            sync = asyncio.create_task(session.post(f"{base}/predict", json=job))
            await poll(lambda: started("sync"))  # the sync call runs: now the signal
            proc.send_signal(signal.SIGTERM)
            resp = await sync
            assert resp.status == 200, "an in-flight sync request finishes"
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        record = await wait_final(api, queued)
        assert record["status"] == "done", "the in-flight batch finished and was acked"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def submits_refused(client: Any, why: str) -> None:
    """An async submit answers 503 with Retry-After saying ``why``, and readiness fails its
    write check for the same reason."""
    resp = await client.post("/predict", json={"input": "x"}, headers={"Async-Mode": "true"})
    assert resp.status == 503, await resp.text()
    assert resp.headers["Retry-After"] == "1"
    assert why in (await resp.json())["error"]
    ready = await client.get("/health/ready")
    assert ready.status == 503
    assert why in (await ready.json())["checks"]["writes"]


async def test_redis_out_of_memory_is_503_not_ready_and_the_queue_still_drains(
    make_client: ClientFactory, rds: Any
) -> None:
    api = await make_client(workers=0, model="tests.models:echo")
    queued = [await submit(api, i) for i in range(3)]
    await rds.config_set("maxmemory", "1")  # noeviction (the default): writes are refused
    seven = int((await rds.info("server"))["redis_version"].split(".")[0]) >= 7
    try:
        await submits_refused(api, "out of memory")
        assert (await api.post("/predict", json={"input": 1})).status == 200, "sync still works"
        assert (await api.get(f"/predict/{queued[0]}")).status == 200, "reads still work"
        waited = await api.get(f"/predict/{queued[1]}?wait=0.2")  # it watches the job
        assert waited.status == 200, "and long-polls"
        worker = await make_client(model="tests.models:echo", consumer_name="drainer")
        if seven:  # Redis 7 lets accepted work finish: the queue drains, memory frees
            for prediction_id in queued:
                assert (await wait_final(api, prediction_id))["status"] == "done"
            assert await rds.xlen(STREAM) == 0
    finally:
        await rds.config_set("maxmemory", "0")
    for prediction_id in queued:  # on 6.2 they finish once memory is there again
        assert (await wait_final(api, prediction_id))["status"] == "done"
    assert (await worker.get("/health/ready")).status == 200
    assert (await submit(api, "after")) is not None


async def test_reads_and_waits_answer_while_redis_refuses_writes_for_want_of_replicas(
    make_client: ClientFactory, rds: Any
) -> None:
    # Redis refuses every write (NOREPLICAS): a read, and a wait whose read would add its
    # watcher, still answer the record as it is.
    api = await make_client(workers=0, model="tests.models:echo")
    prediction_id = await submit(api, "read me")
    await rds.config_set("min-replicas-to-write", "1")
    try:
        assert (await api.get(f"/predict/{prediction_id}")).status == 200
        waited = await api.get(f"/predict/{prediction_id}?wait=0.2")
        assert waited.status == 200 and (await waited.json())["status"] == "queued"
    finally:
        await rds.config_set("min-replicas-to-write", "0")


async def test_a_replica_starts_while_redis_is_out_of_memory_and_waits(
    make_client: ClientFactory, rds: Any
) -> None:
    await rds.config_set("maxmemory", "1")
    try:
        client = await make_client(model="tests.models:echo")  # no stream, no group yet
        ready = await client.get("/health/ready")
        assert ready.status == 503
        assert "missing" in (await ready.json())["checks"]["consumer_group"]
    finally:
        await rds.config_set("maxmemory", "0")

    async def ready_now() -> bool:
        return (await client.get("/health/ready")).status == 200

    await poll(ready_now)
    assert (await wait_final(client, await submit(client, "works")))["status"] == "done"


async def test_a_read_only_replica_is_503_and_not_ready(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    primary = RedisServer(tmp_path / "primary", free_port())
    replica = RedisServer(tmp_path / "replica", free_port())
    primary.start()
    url = replica.start()
    try:
        client = await make_client(redis_url=url, workers=0)
        assert (await client.get("/health/ready")).status == 200
        with redis.Redis.from_url(url) as plain:  # what a failover does to the old primary
            plain.replicaof("127.0.0.1", primary.port)
        await submits_refused(client, "read-only replica")
    finally:
        replica.stop()
        primary.stop()


def _http(method: str, url: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.timeout(90)
async def test_shutdown_ends_within_the_grace_period_and_answers_everyone_first(
    redis_url: str, rds: Any
) -> None:
    port = free_port()
    proc = await _serve(
        {
            "REDIS_URL": redis_url,
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "MODEL": "tests.models:varying",  # a number input takes that many seconds
            "SHUTDOWN_GRACE_SECONDS": "3",
            "LOG_LEVEL": "WARNING",
        }
    )
    base = f"http://127.0.0.1:{port}"
    try:

        async def up() -> bool:
            try:
                return (
                    await asyncio.to_thread(urllib.request.urlopen, base + "/health/ready")
                ).status == 200
            except OSError:
                return False

        await poll(up, within=30)
        sync = asyncio.create_task(
            asyncio.to_thread(_http, "POST", base + "/predict", {"input": 30}, {})
        )
        waited = asyncio.create_task(
            asyncio.to_thread(
                _http,
                "POST",
                base + "/predict",
                {"input": 30},
                {"Async-Mode": "true", "Prefer": "wait=60"},
            )
        )

        async def both_running() -> bool:
            pending = await rds.xpending(STREAM, GROUP)
            return pending["pending"] == 1  # the waited job runs (delivered to this replica)

        await poll(both_running)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        took = time.monotonic() - began
        sync_status, sync_body = await sync
        waited_status, waited_body = await waited
    finally:
        if proc.returncode is None:
            proc.kill()
    assert code == 0
    assert took < 3 + 2.0, f"exit took {took:.1f} s with a 3 s grace period"
    assert sync_status == 503 and "shutting down" in sync_body["error"], sync_body
    assert waited_status == 202, waited_body  # the waiter learned its id before the close
    prediction_id = waited_body["prediction_id"]
    # Handed back for other replicas: queued again, undelivered (not waiting out a reclaim).
    assert await rds.hget(KEYS.record(prediction_id), "status") == b"queued"
    assert (await rds.xpending(STREAM, GROUP))["pending"] == 0
    assert await rds.xlen(STREAM) == 1


@pytest.mark.modes("single", "sentinel")
async def test_commands_past_the_pool_wait_for_a_connection(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # More commands at once than the pool has connections (a burst of stream followers
    # woken together) wait for one to come back: none fails with "Too many connections".
    monkeypatch.setattr(connection, "POOL_SIZE", 3)
    client = connection.client_for(parse_redis_url(redis_url), socket_timeout=5)
    try:
        answers = await asyncio.gather(*(client.blpop(["nothing"], 0.1) for _ in range(10)))
        assert answers == [None] * 10
    finally:
        await connection.close(client)
