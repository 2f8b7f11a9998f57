"""Cancel-After: a queued job whose deadline passes before it starts never runs and ends
`aborted` (a sync request: 504 `aborted`), one still running ends `canceled`; a value that
is not a duration is a 400. On one node and on a cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from service.http import state

from . import models
from .helpers import ClientFactory, figure, poll, scrape, worker_for

MODES = pytest.mark.modes("single", "cluster")


async def submit_within(client: TestClient, value: str, within: str) -> str:
    resp = await client.post(
        "/predict", json={"input": value}, headers={"Async-Mode": "true", "Cancel-After": within}
    )
    assert resp.status == 202, await resp.text()
    return (await resp.json())["prediction_id"]  # type: ignore[no-any-return]


@MODES
async def test_a_job_not_started_within_its_cancel_after_never_runs(
    make_client: ClientFactory,
) -> None:
    client = await make_client(model="tests.models:echo", workers=0, queue_partitions=1)
    stale = await submit_within(client, "stale", "1ms")
    fresh = await submit_within(client, "fresh", "1h")
    worker = worker_for(client, "w")
    await worker.step()  # its own pending entries: none
    assert await worker.step() == 2
    record = await (await client.get(f"/predict/{stale}")).json()
    assert record["status"] == "aborted"
    assert record["output"] == {"input": "stale", "result": None}
    assert record["started_at"] is None and record["attempts"] == 0
    assert record["finished_at"] is not None
    assert (await (await client.get(f"/predict/{fresh}")).json())["status"] == "done"
    assert models.calls == {repr("fresh"): 1}, "the stale job never reached the model"
    # The events stream reports it, then ends.
    events = await client.get(f"/predict/{stale}/events")
    text = await events.text()
    assert '"status":"aborted"' in text.replace(" ", "")
    # Counted as what it is: neither done nor failed.
    counts = await scrape(client)
    labels = {"model": "default", "mode": "async"}
    assert figure(counts, "predictions_total", status="aborted", **labels) == 1
    assert figure(counts, "predictions_total", status="done", **labels) == 1
    with pytest.raises(AssertionError, match="no sample"):
        figure(counts, "predictions_total", status="failed", **labels)


@MODES
async def test_a_bulk_submit_gives_every_job_its_cancel_after(
    make_client: ClientFactory,
) -> None:
    client = await make_client(model="tests.models:echo", workers=0, queue_partitions=1)
    resp = await client.post(
        "/predict/batch", json={"inputs": ["a", "b"]}, headers={"Cancel-After": "1ms"}
    )
    assert resp.status == 202, await resp.text()
    ids = (await resp.json())["prediction_ids"]
    worker = worker_for(client, "w")
    await worker.step()
    assert await worker.step() == 2
    for prediction_id in ids:
        assert (await (await client.get(f"/predict/{prediction_id}")).json())["status"] == "aborted"
    assert models.calls == {}


@pytest.mark.parametrize(
    "value",
    [
        "5 minutes",
        "0s",
        "0ms",
        "00.0h",
        "-1s",
        "10x",
        "",
        "1e3s",
        "2.5.1s",
        "ms",
        "1000000000h",  # ten digits before the point: over the one bound
        "9999999999h",
        "0.0000001s",  # seven after it
    ],
)
async def test_a_cancel_after_that_is_not_a_duration_is_a_400_giving_the_format(
    make_client: ClientFactory, value: str
) -> None:
    client = await make_client(model="tests.models:echo", workers=0)
    for path, body in (("/predict", {"input": "x"}), ("/predict/batch", {"inputs": ["x"]})):
        resp = await client.post(
            path, json=body, headers={"Async-Mode": "true", "Cancel-After": value}
        )
        assert resp.status == 400, await resp.text()
        assert "250ms, 30s, 5m" in (await resp.json())["error"]


@pytest.mark.parametrize("value", ["999999999h", "0.000001s", "007s", "1.5h", "250ms", ".5m"])
async def test_a_duration_at_the_bounds_is_taken(make_client: ClientFactory, value: str) -> None:
    client = await make_client(model="tests.models:echo", workers=0)
    resp = await client.post(
        "/predict", json={"input": "x"}, headers={"Async-Mode": "true", "Cancel-After": value}
    )
    assert resp.status == 202, await resp.text()


async def test_a_sync_request_within_its_cancel_after_is_answered(
    make_client: ClientFactory,
) -> None:
    client = await make_client(model="tests.models:echo")
    resp = await client.post("/predict", json={"input": "x"}, headers={"Cancel-After": "30s"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["result"] == {"echo": "x"}


async def test_a_sync_request_not_started_within_its_cancel_after_is_aborted(
    make_client: ClientFactory,
) -> None:
    # One call at a time (OneAtATime): the first holds the model; the second waits for it
    # past its Cancel-After, and is answered aborted without ever reaching the model.
    client = await make_client(model="tests.models:OneAtATime")
    holding = asyncio.ensure_future(client.post("/predict", json={"input": "hold"}))
    await poll(lambda: asyncio.to_thread(models.started.wait, 0.1))
    resp = await client.post("/predict", json={"input": "late"}, headers={"Cancel-After": "200ms"})
    assert resp.status == 504, await resp.text()
    body = await resp.json()
    assert body["status"] == "aborted"
    assert body["output"] == {"input": "late", "result": None}
    assert "Cancel-After" in body["error"]
    models.release()
    assert (await holding).status == 200
    assert models.batch_sizes == [1], "the aborted input never reached the model"
    counts = await scrape(client)
    assert figure(counts, "predictions_total", status="aborted", model="default", mode="sync") == 1


async def test_a_sync_request_running_past_its_cancel_after_is_canceled(
    make_client: ClientFactory,
) -> None:
    client = await make_client(model="tests.models:gated")
    resp = await client.post("/predict", json={"input": "x"}, headers={"Cancel-After": "300ms"})
    assert resp.status == 504, await resp.text()
    body = await resp.json()
    assert (body["status"], body["output"]["result"]) == ("canceled", None)
    assert models.started.is_set(), "it had started"
    models.release()


@MODES
async def test_a_job_running_past_its_cancel_after_ends_canceled_its_result_dropped(
    make_client: ClientFactory,
) -> None:
    # Thread execution: the call cannot be stopped; its result is dropped.
    client = await make_client(model="tests.models:slow", workers=0, queue_partitions=1)
    late = await submit_within(client, "late", "300ms")
    resp = await client.post("/predict", json={"input": "kept"}, headers={"Async-Mode": "true"})
    kept = (await resp.json())["prediction_id"]
    worker = worker_for(client, "w")
    await worker.step()
    assert await worker.step() == 2  # one batch: both started, the model ran both
    record = await (await client.get(f"/predict/{late}")).json()
    assert record["status"] == "canceled", record
    assert record["output"]["result"] is None and record["started_at"] is not None
    assert "error" not in record
    assert (await (await client.get(f"/predict/{kept}")).json())["status"] == "done"
    counts = await scrape(client)
    labels = {"model": "default", "mode": "async"}
    assert figure(counts, "predictions_total", status="canceled", **labels) == 1
    assert figure(counts, "predictions_total", status="done", **labels) == 1


async def test_a_process_model_call_past_every_cancel_after_is_cut_short(
    make_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "journal"
    monkeypatch.setenv("TEST_JOURNAL", str(journal))
    client = await make_client(
        model="tests.models:journaled", execution="process", process_workers=1, workers=0
    )
    resp = await client.post(
        "/predict/batch",
        json={"inputs": [{"tag": "long", "seconds": 120}, {"tag": "second", "seconds": 0}]},
        headers={"Cancel-After": "1s"},
    )
    jobs = (await resp.json())["prediction_ids"]
    worker = worker_for(client, "w", job=jobs[0])
    await worker.step()
    assert await worker.step() == 2  # one model call; back at the deadline, not after 120 s
    for prediction_id in jobs:
        assert (await (await client.get(f"/predict/{prediction_id}")).json())["status"] == (
            "canceled"
        )
    ((_, tag, pid),) = [line.split() for line in journal.read_text().splitlines()]
    assert tag == "long", "the call started and never ended"

    def gone() -> bool:  # the process that ran it is gone, or a zombie
        try:
            return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
        except OSError:  # gone (it can go between opening the file and reading it)
            return True

    async def ended() -> bool:
        return await asyncio.to_thread(gone)

    await poll(ended)
    # A new pool process takes the next job.
    resp = await client.post(
        "/predict", json={"input": {"tag": "next", "seconds": 0}}, headers={"Async-Mode": "true"}
    )
    next_job = (await resp.json())["prediction_id"]

    async def next_done() -> dict[str, Any] | None:
        await worker.step()
        record = await (await client.get(f"/predict/{next_job}")).json()
        return record if record["status"] == "done" else None

    record = await poll(next_done, 30)
    assert record["output"]["result"]["pid"] != int(pid)


async def test_cutting_a_call_short_leaves_the_calls_of_other_processes_alone(
    make_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two model processes: a job past its Cancel-After ends the process running it, and
    only that one; a sync request running in the other process meanwhile gets its answer."""
    journal = tmp_path / "journal"
    monkeypatch.setenv("TEST_JOURNAL", str(journal))
    client = await make_client(
        model="tests.models:journaled", execution="process", process_workers=2, workers=0
    )
    processes = client.server.app[state.EXECUTOR].processes

    async def started(tag: str) -> int | None:
        lines = journal.read_text().splitlines() if journal.exists() else []
        starts = [line.split() for line in lines if line.startswith(f"start {tag} ")]
        return int(starts[0][2]) if starts else None

    beside = asyncio.ensure_future(
        client.post("/predict", json={"input": {"tag": "beside", "seconds": 3}})
    )
    beside_pid = await poll(lambda: started("beside"))
    resp = await client.post(
        "/predict",
        json={"input": {"tag": "long", "seconds": 120}},
        headers={"Async-Mode": "true", "Cancel-After": "1s"},
    )
    job = (await resp.json())["prediction_id"]
    worker = worker_for(client, "w", job=job)
    await worker.step()
    assert await worker.step() == 1  # back at the deadline, while "beside" still runs
    assert (await (await client.get(f"/predict/{job}")).json())["status"] == "canceled"
    long_pid = await started("long")
    assert long_pid is not None and long_pid != beside_pid
    answer = await beside
    assert answer.status == 200, await answer.text()
    assert (await answer.json())["result"] == {"pid": beside_pid, "tag": "beside"}
    assert beside_pid in processes.pids(), "the other process lives on"

    async def long_gone() -> bool:
        return long_pid not in processes.pids()

    await poll(long_gone)
