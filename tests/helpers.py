"""Helpers the tests share: waiting with a deadline, submitting and waiting for jobs,
reading metrics, a worker to step by hand, and the service run as users run it. The API
contract the tests hold the service to is docs/api.md."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from scripts.redis_local import until
from service.background import make_worker
from service.http import state
from service.job import Status
from service.jobs.worker import Worker
from service.redis.embedded import free_port
from service.redis.keys import Keys, Names, Partitions

ClientFactory = Callable[..., Awaitable[TestClient]]
ROOT = Path(__file__).resolve().parent.parent
#: The key names of the default settings' one partition on one node, from the code's own
#: builder: tests name keys through these, never as strings of their own.
KEYS = Partitions.single(Names())[0]
STREAM, GROUP = KEYS.stream, KEYS.group
#: Statuses after which a job never changes.
FINAL = {status.value for status in Status if status.final}
JSON = {"Content-Type": "application/json"}
ASYNC = {**JSON, "Async-Mode": "true"}


async def poll(
    check: Callable[[], Awaitable[Any]], within: float = 10.0, interval: float = 0.02
) -> Any:
    """Calls ``check`` until it returns something truthy; fails after ``within`` seconds.
    (The one way to wait for something in an async test; `until` is the same for code
    that cannot await.)"""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s (last value: {value!r})")
        await asyncio.sleep(interval)


def service_env(port: int, **more: str) -> dict[str, str]:
    """This environment, for a service on 127.0.0.1:``port`` logging warnings, and ``more``."""
    return {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "WARNING", **more}


def wait_answering(base: str, proc: subprocess.Popen[Any], within: float = 30.0) -> None:
    """Waits until the service started as ``proc`` answers at ``base``; fails if it exits
    first or takes longer than ``within`` seconds."""

    def answers() -> bool:
        assert proc.poll() is None, "the service exited at start-up"
        try:
            urllib.request.urlopen(base + "/health/live", timeout=2).close()
        except (urllib.error.URLError, OSError):
            return False
        return True

    until(answers, within, "the service answers")


@contextmanager
def running_service(**env: str) -> Iterator[str]:
    """`python -m service` as users run it, in a subprocess on a free port, with ``env``
    added to this environment; yields its base URL once it answers; on exit, SIGTERM and
    a clean exit (code 0) within 30 s.
    """
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=ROOT, env=service_env(port, **env)
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_answering(base, proc)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, f"exit code {code} after SIGTERM"


async def submit(client: TestClient, value: Any) -> str:
    resp = await client.post("/predict", json={"input": value}, headers={"Async-Mode": "true"})
    assert resp.status == 202, await resp.text()
    return (await resp.json())["prediction_id"]  # type: ignore[no-any-return]


async def wait_final(
    client: TestClient, prediction_id: str, within: float = 10.0
) -> dict[str, Any]:
    async def final() -> dict[str, Any] | None:
        body = await (await client.get(f"/predict/{prediction_id}")).json()
        return body if body["status"] in FINAL else None

    return await poll(final, within)  # type: ignore[no-any-return]


def worker_for(
    client: TestClient, consumer: str, visibility_timeout: float = 60.0, job: str = ""
) -> Worker:
    """A worker of the client's app to step by hand (small batches, short blocking reads),
    reading the partition of ``job`` (a prediction id; the first partition by default)."""
    app = client.server.app
    return make_worker(
        app,
        consumer,
        partition=app[state.PARTITIONS].of(job).index if job else 0,
        batch_size=8,
        block_ms=10,
        visibility_timeout=visibility_timeout,
    )


async def record(rds: Redis, prediction_id: str) -> dict[bytes, bytes]:
    return await rds.hgetall(KEYS.record(prediction_id))  # type: ignore[no-any-return]


def figure(text: str, name: str, **labels: str) -> float:
    """The value of one sample in the Prometheus text format; fails when it is absent (a
    missing or renamed metric must not read as 0)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        metric, _, label_part = sample.partition("{")
        got = ",".join(sorted(label_part.rstrip("}").split(","))) if label_part else ""
        if metric == name and got == want:
            return float(value)
    raise AssertionError(f"no sample {name}{{{want}}} in the scrape")


async def scrape(client: TestClient) -> str:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    return await resp.text()


async def scrape_until(client: TestClient, **wanted: float) -> str:
    """Scrapes until every named figure has the wanted value (queue figures are read from
    Redis at most once a second)."""

    async def matches() -> str | None:
        text = await scrape(client)
        return text if all(figure(text, k) == v for k, v in wanted.items()) else None

    return await poll(matches)  # type: ignore[no-any-return]


def partitions_of(client: TestClient) -> Partitions:
    """The partitions the client's app uses (one untagged one on a plain Redis)."""
    return client.server.app[state.PARTITIONS]


def streams_of(client: TestClient) -> list[Keys]:
    """Every stream of the client's queue: each partition's, of each tenant and priority."""
    partitions = partitions_of(client)
    return [keys for p in partitions.all for keys in partitions.streams(p)]


async def queued(rds: Redis, client: TestClient) -> int:
    """Entries in every stream (waiting or running)."""
    return sum([await rds.xlen(k.stream) for k in streams_of(client)])


async def pending(rds: Redis, client: TestClient) -> int:
    """Entries delivered and not yet acked, over every stream."""
    total = 0
    for keys in streams_of(client):
        if await rds.exists(keys.stream):
            total += (await rds.xpending(keys.stream, keys.group))["pending"]
    return total


def record_key(client: TestClient, prediction_id: str) -> str:
    return partitions_of(client).record(prediction_id)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keys_file(path: Path, **tenants: dict[str, Any]) -> Path:
    """Writes a keys file (API_KEYS_FILE): each tenant's key is its name + '-key', stored
    as its digest."""
    lines = []
    for name, limits in tenants.items():
        lines.append(f"[tenants.{name}]")
        lines.append(f'keys = ["{digest(name + "-key")}"]')
        lines += [f"{k} = {v}" for k, v in limits.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}-key"}


async def dead_letter(client: TestClient, rds: Redis, value: Any) -> str:
    """A job given up on: two deliveries started and never finished (their consumers
    died), then a third delivery, which mark.lua refuses (MAX_DELIVERIES=2)."""
    prediction_id = await submit(client, value)
    keys = client.server.app[state.PARTITIONS].of(prediction_id)
    await rds.hset(keys.record(prediction_id), mapping={"status": "processing", "attempts": 2})
    await rds.xreadgroup(keys.group, "dead-consumer", {keys.stream: ">"}, count=100)
    worker = worker_for(client, "rescuer", visibility_timeout=0.01, job=prediction_id)

    async def given_up() -> bool:
        await worker.step()
        record = await (await client.get(f"/predict/{prediction_id}")).json()
        return bool(record["status"] == "failed")

    await poll(given_up)
    return prediction_id


#: Debian's chromium, for the tests in a real browser (CHROMIUM names another), and how
#: they start it: headless, quiet, asking nothing of the network itself.
CHROMIUM = (
    os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
)
BROWSER_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
