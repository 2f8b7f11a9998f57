"""Safe scale-in: a replica told to stop (SIGTERM, as Kubernetes does at scale-in) stops
reading, finishes what it holds within SHUTDOWN_GRACE_SECONDS or hands it back to the
queue, and another replica completes the rest; nothing is lost, nothing runs twice but a
job cut off by the end of the grace period. Replicas are real `python -m service`
processes on one Redis (6.2 and 7, and a cluster)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from service.redis.embedded import free_port

from .helpers import ClientFactory, partitions_of, poll, wait_final

ROOT = Path(__file__).resolve().parent.parent
MODEL = "tests.models:journaled"

pytestmark = [pytest.mark.timeout(120), pytest.mark.modes("single", "cluster")]


class Replica:
    def __init__(self, proc: asyncio.subprocess.Process, base: str) -> None:
        self.proc, self.base = proc, base

    @property
    def pid(self) -> int:
        return self.proc.pid


Start = Callable[..., Any]


@pytest.fixture
async def start_replica(redis_url: str, tmp_path: Path) -> AsyncIterator[Start]:
    """Starts `python -m service` replicas of the journaled model on this test's Redis;
    answers once each is ready. Kills any left at the end."""
    started: list[Replica] = []

    async def start(name: str, **env: str) -> Replica:
        port = free_port()
        values = {
            "REDIS_URL": redis_url,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "MODEL": MODEL,
            "CONSUMER_NAME": name,
            "WORKERS": "1",
            "QUEUE_PARTITIONS": "1",
            "MAX_BATCH_SIZE": "2",
            "MAX_BATCH_DELAY_MS": "0",
            "VISIBILITY_TIMEOUT_SECONDS": "60",  # a hand-back must not wait for a reclaim
            "LOG_LEVEL": "WARNING",
            "TEST_JOURNAL": str(tmp_path / "journal"),
            **env,
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", cwd=ROOT, env={**os.environ, **values}
        )
        replica = Replica(proc, f"http://127.0.0.1:{port}")
        started.append(replica)

        async def ready() -> bool:
            assert proc.returncode is None, f"replica {name} exited with {proc.returncode}"
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(replica.base + "/health/ready") as resp,
                ):
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await poll(ready, within=60, interval=0.1)
        return replica

    yield start
    for replica in started:
        if replica.proc.returncode is None:
            replica.proc.kill()
            await replica.proc.wait()


def journal(tmp_path: Path) -> list[tuple[str, str, int]]:
    """(event, tag, pid) lines, in order; `sigterm` lines are the test's own marks."""
    path = tmp_path / "journal"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(e, t, int(p)) for e, t, p in (line.split() for line in lines)]


def started(tmp_path: Path) -> bool:
    return any(event == "start" for event, _, _ in journal(tmp_path))


def mark_sigterm(tmp_path: Path, replica: Replica) -> None:
    with open(tmp_path / "journal", "a") as out:
        out.write(f"sigterm - {replica.pid}\n")


async def stop(replica: Replica, grace: float) -> float:
    """SIGTERM, then the seconds until it exited (it must exit 0)."""
    began = time.monotonic()
    replica.proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(replica.proc.wait(), grace + 30)
    assert code == 0
    return time.monotonic() - began


async def consumers(rds: Redis, api: Any) -> set[str]:
    """The consumer names in the group of the app's one partition."""
    keys = partitions_of(api)[0]
    return {c["name"].decode() for c in await rds.xinfo_consumers(keys.stream, keys.group)}


async def submit(api: Any, tag: str, seconds: float) -> str:
    resp = await api.post(
        "/predict",
        json={"input": {"tag": tag, "seconds": seconds}},
        headers={"Async-Mode": "true"},
    )
    assert resp.status == 202, await resp.text()
    return (await resp.json())["prediction_id"]  # type: ignore[no-any-return]


async def test_a_stopping_replica_finishes_its_batch_and_leaves_the_rest_to_another(
    make_client: ClientFactory, start_replica: Start, tmp_path: Path, rds: Redis
) -> None:
    # The jobs are queued through an API-only app, then one replica takes a batch of two
    # (a second each) and is stopped as the first starts: it finishes both within its
    # 5 s grace period; the other four stay queued and a second replica runs them.
    api = await make_client(workers=0, model=MODEL, queue_partitions=1)
    ids = {f"j{i}": await submit(api, f"j{i}", 1.0) for i in range(6)}
    a = await start_replica("a", SHUTDOWN_GRACE_SECONDS="5")
    await poll(lambda: asyncio.to_thread(started, tmp_path))
    mark_sigterm(tmp_path, a)
    took = await stop(a, 5)
    assert took < 5 + 2.5, f"exit took {took:.1f} s with a 5 s grace period"
    assert not {c for c in await consumers(rds, api) if c.startswith("a-")}, "a left the group"
    b = await start_replica("b")
    records = {tag: await wait_final(api, pid, within=30) for tag, pid in ids.items()}

    lines = journal(tmp_path)
    starts = Counter(tag for event, tag, _ in lines if event == "start")
    assert starts == dict.fromkeys(ids, 1), f"each job ran once: {lines}"
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in records.values()), records
    cut = lines.index(("sigterm", "-", a.pid))
    ended_on_a_after = [t for e, t, p in lines[cut:] if e == "end" and p == a.pid]
    assert ended_on_a_after, f"a finished its in-flight batch after SIGTERM: {lines}"
    on_b = {tag for tag, r in records.items() if r["output"]["result"]["pid"] == b.pid}
    assert on_b and len(on_b) + len(ended_on_a_after) >= 4, f"the rest ran on b: {lines}"


async def test_a_job_longer_than_the_grace_period_is_handed_back_and_run_elsewhere(
    make_client: ClientFactory, start_replica: Start, tmp_path: Path, rds: Redis
) -> None:
    # A 6 s job on a replica with a 2 s grace period: at the end of it the job goes back on
    # the queue (not after the 60 s visibility timeout), the replica exits without its
    # result, and the other replica runs the job again (attempt 2) to the end.
    api = await make_client(workers=0, model=MODEL, queue_partitions=1)
    a = await start_replica("a", SHUTDOWN_GRACE_SECONDS="2")
    prediction_id = await submit(api, "long", 6.0)
    await poll(lambda: asyncio.to_thread(lambda: ("start", "long", a.pid) in journal(tmp_path)))
    b = await start_replica("b")
    mark_sigterm(tmp_path, a)
    began = time.monotonic()
    took = await stop(a, 2)
    assert took < 2 + 2.5, f"exit took {took:.1f} s with a 2 s grace period"
    assert not {c for c in await consumers(rds, api) if c.startswith("a-")}, "a left the group"
    record = await wait_final(api, prediction_id, within=20)
    elapsed = time.monotonic() - began
    assert record["status"] == "done" and record["output"]["result"]["pid"] == b.pid, record
    assert record["attempts"] == 2, "the abandoned run is counted"
    assert elapsed < 2 + 6 + 5, f"handed back at once, not after a reclaim ({elapsed:.1f} s)"
    lines = journal(tmp_path)
    assert ("end", "long", a.pid) not in lines, "the first run's result was never written"
    assert [(e, p) for e, t, p in lines if t == "long"] == [
        ("start", a.pid),
        ("start", b.pid),
        ("end", b.pid),
    ], lines
