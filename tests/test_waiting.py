"""Beyond polling: Prefer wait/respond-async, long-poll GETs woken across replicas, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from service.http import state

from . import models
from .helpers import (
    STREAM,
    ClientFactory,
    figure,
    partitions_of,
    pending,
    poll,
    queued,
    submit,
    wait_final,
    worker_for,
)


@pytest.mark.modes("single", "cluster")
async def test_prefer_wait_answers_the_finished_record(make_client: ClientFactory) -> None:
    client = await make_client(model="tests.models:echo")
    resp = await client.post(
        "/predict", json={"input": 3}, headers={"Async-Mode": "true", "Prefer": "wait=5"}
    )
    assert resp.status == 200
    assert resp.headers["Preference-Applied"] == "wait=5"
    record = await resp.json()
    assert record["status"] == "done"
    assert record["output"] == {"input": 3, "result": {"echo": 3}}


@pytest.mark.modes("single", "cluster")
async def test_the_waited_record_is_the_stored_one_done_or_failed(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # The worker hands the record it just wrote to waiters on its replica without reading
    # it back: field for field, it must be what GET answers from Redis, and handing it
    # over raises nothing (the batch would be logged as failed and the waiter read it back).
    caplog.set_level(logging.WARNING)
    client = await make_client(
        model="tests.models:Fragile",
        webhook_allow_private=True,
        webhook_allowed_hosts="127.0.0.1",
    )
    for text, status in (("fine", "done"), ("boom", "failed")):
        resp = await client.post(
            "/predict",
            json={"input": text, "webhook": "http://127.0.0.1:9/hook"},
            headers={"Async-Mode": "true", "Prefer": "wait=5", "X-Request-ID": f"r-{text}"},
        )
        assert resp.status == 200
        waited = await resp.json()
        assert waited["status"] == status and waited["request_id"] == f"r-{text}"
        assert waited["attempts"] == 1 and waited["started_at"] <= waited["finished_at"]
        stored = await (await client.get(f"/predict/{waited['prediction_id']}")).json()
        assert waited == stored
    # (A waited job runs in the direct lane, which logs a failed batch as a warning.)
    problems = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR or r.name == "service.jobs.lane"
    ]
    assert not problems, problems


async def test_prefer_wait_answers_a_full_queue_at_once(make_client: ClientFactory) -> None:
    # The wait starts with the submit; a full queue must still answer as without Prefer:
    # wait, and not after the wait.
    full = await make_client(workers=0, max_queue=1)
    waiting = {"Async-Mode": "true", "Prefer": "wait=30"}
    await submit(full, "a")  # no worker: it stays queued
    started = asyncio.get_running_loop().time()
    resp = await full.post("/predict", json={"input": "b"}, headers=waiting)
    assert resp.status == 429 and "queue" in (await resp.json())["error"]
    assert asyncio.get_running_loop().time() - started < 10


@pytest.mark.modes("single", "cluster")
async def test_prefer_wait_answers_a_reused_idempotency_key_at_once(
    make_client: ClientFactory,
) -> None:
    waiting = {"Async-Mode": "true", "Prefer": "wait=30"}
    started = asyncio.get_running_loop().time()
    client = await make_client(model="tests.models:echo")
    keyed = {**waiting, "Idempotency-Key": "order-19"}
    first = await client.post("/predict", json={"input": 5}, headers=keyed)
    assert first.status == 200
    record = await first.json()
    again = await client.post("/predict", json={"input": 5}, headers=keyed)
    assert again.status == 200 and (await again.json()) == record  # the earlier job's record
    other = await client.post("/predict", json={"input": 6}, headers=keyed)
    assert other.status == 409
    assert asyncio.get_running_loop().time() - started < 10


@pytest.mark.modes("single", "cluster")
async def test_a_waited_job_runs_here_at_once_even_while_the_workers_are_busy(
    make_client: ClientFactory, rds: Redis
) -> None:
    # The direct lane: the submit script hands a waited-for job to this replica, marked
    # processing, so the one worker being stuck on another job does not hold it up.
    client = await make_client(
        model="tests.models:gated", models="echo=tests.models:echo", workers=1
    )
    stuck = await submit(client, "held")
    assert await asyncio.to_thread(models.started.wait, 10)
    resp = await client.post(
        "/models/echo/predict",
        json={"input": 7},
        headers={"Async-Mode": "true", "Prefer": "wait=5"},
    )
    assert resp.status == 200
    record = await resp.json()
    assert record["status"] == "done" and record["attempts"] == 1
    assert record["started_at"] == record["created_at"]  # marked when submitted
    assert await queued(rds, client) == 1  # its entry is acked and gone; "held" waits
    models.release()
    assert (await wait_final(client, stuck))["status"] == "done"


async def test_with_jobs_waiting_undelivered_a_waited_job_queues_behind_them(
    make_client: ClientFactory,
) -> None:
    client = await make_client(
        model="tests.models:gated", models="echo=tests.models:echo", workers=1
    )
    first = await submit(client, "held")
    assert await asyncio.to_thread(models.started.wait, 10)
    behind = await submit(client, "next")  # undelivered: the only worker is busy
    resp = await client.post(
        "/models/echo/predict",
        json={"input": 8},
        headers={"Async-Mode": "true", "Prefer": "wait=0.3"},
    )
    assert resp.status == 202  # not run out of turn
    waited = (await resp.json())["prediction_id"]
    models.release()
    for prediction_id in (first, behind, waited):
        assert (await wait_final(client, prediction_id))["status"] == "done"


@pytest.mark.modes("single", "cluster")
async def test_prefer_wait_falls_back_to_202_when_the_job_is_slower(
    make_client: ClientFactory,
) -> None:
    client = await make_client(model="tests.models:gated")
    resp = await client.post(
        "/predict", json={"input": 1}, headers={"Async-Mode": "true", "Prefer": "wait=0.2"}
    )
    assert resp.status == 202
    prediction_id = (await resp.json())["prediction_id"]
    models.release()
    assert (await wait_final(client, prediction_id))["status"] == "done"


async def test_prefer_respond_async_is_async_mode(make_client: ClientFactory) -> None:
    client = await make_client(workers=0)
    resp = await client.post("/predict", json={"input": "hi"}, headers={"Prefer": "respond-async"})
    assert resp.status == 202
    explicit = await client.post(
        "/predict",
        json={"input": "hi"},
        headers={"Prefer": "respond-async", "Async-Mode": "false"},
    )
    assert explicit.status == 200, "an explicit Async-Mode wins"


@pytest.mark.modes("single", "cluster", "sentinel")
async def test_a_long_poll_is_woken_by_a_job_finished_on_another_replica(
    make_client: ClientFactory,
) -> None:
    api = await make_client(workers=0, model="tests.models:gated")
    prediction_id = await submit(api, "wake me")
    await make_client(model="tests.models:gated", consumer_name="other")  # the worker
    waiting = asyncio.create_task(api.get(f"/predict/{prediction_id}?wait=30"))

    async def running() -> bool:
        return models.started.is_set()

    await poll(running)
    assert not waiting.done()
    models.release()
    # Woken by the announcement, not by the 30 s running out:
    resp = await asyncio.wait_for(waiting, 10)
    record = await resp.json()
    assert record["status"] == "done" and record["output"]["result"] == {"echo": "wake me"}


async def test_a_jobs_start_and_end_are_told_only_to_the_replica_that_waits_for_it(
    make_client: ClientFactory, rds: Redis
) -> None:
    # Three replicas up; Redis publishes nothing for jobs no one waits for, and a wait's
    # start and end go to the waiting replica's channel alone, not to every replica.
    pubsub = rds.pubsub()
    await pubsub.psubscribe("*")
    await pubsub.get_message(timeout=1)
    api = await make_client(workers=0, model="tests.models:echo", consumer_name="api")
    await make_client(workers=0, model="tests.models:echo", consumer_name="idle")
    await make_client(model="tests.models:echo", consumer_name="worker")
    plain = [await submit(api, f"plain {i}") for i in range(5)]
    for prediction_id in plain:
        assert (await wait_final(api, prediction_id))["status"] == "done"
    resp = await api.post(
        "/predict", json={"input": "waited"}, headers={"Async-Mode": "true", "Prefer": "wait=10"}
    )
    assert resp.status == 200
    waited = (await resp.json())["prediction_id"]
    heard: list[tuple[bytes, bytes]] = []
    while (message := await pubsub.get_message(timeout=0.5)) is not None:
        heard.append((message["channel"], message["data"]))
    await pubsub.aclose()
    told = {(channel.rsplit(b":", 1)[1], data[:1]) for channel, data in heard}
    assert told == {(b"api", b"s"), (b"api", b"e")}, heard
    assert all(waited.encode() in data for _, data in heard), "only the waited job"


async def test_an_events_follower_leaving_does_not_unhook_a_long_poll_on_its_replica(
    make_client: ClientFactory,
) -> None:
    # A long-poll and an /events stream on the same replica wait for the same job; the
    # stream closes first. The long-poll is still woken by the job's end on another
    # replica (not by its 30 s running out).
    api = await make_client(workers=0, model="tests.models:echo", consumer_name="api")
    prediction_id = await submit(api, "twice watched")
    waiting = asyncio.create_task(api.get(f"/predict/{prediction_id}?wait=30"))
    events = await api.get(f"/predict/{prediction_id}/events")
    assert events.status == 200
    while b'"queued"' not in await asyncio.wait_for(events.content.readline(), 10):
        pass  # its first status event: it follows the job now
    events.close()
    waiters = api.server.app[state.WAITERS]

    async def left() -> bool:
        return not waiters.followed(prediction_id)

    await poll(left)  # the stream's follower is gone from the replica
    assert not waiting.done()
    await make_client(model="tests.models:echo", consumer_name="worker")
    resp = await asyncio.wait_for(waiting, 10)
    assert (await resp.json())["status"] == "done"


async def test_a_long_poll_answers_the_current_record_when_time_is_up(
    make_client: ClientFactory,
) -> None:
    client = await make_client(workers=0)
    prediction_id = await submit(client, "nobody works here")
    resp = await client.get(f"/predict/{prediction_id}?wait=0.2")
    assert resp.status == 200 and (await resp.json())["status"] == "queued"


async def test_bad_wait_values_are_400(make_client: ClientFactory) -> None:
    client = await make_client()
    bad = await client.post(
        "/predict", json={"input": "x"}, headers={"Async-Mode": "true", "Prefer": "wait=soon"}
    )
    assert bad.status == 400 and "error" in await bad.json()
    resp = await client.get("/predict/00000000-0000-4000-8000-000000000000?wait=-1")
    assert resp.status == 400


@pytest.mark.modes("single", "cluster")
async def test_cancel_a_queued_job_so_it_never_runs(make_client: ClientFactory, rds: Redis) -> None:
    client = await make_client(workers=0, model="tests.models:echo")
    prediction_id = await submit(client, "never")
    resp = await client.delete(f"/predict/{prediction_id}")
    assert resp.status == 200
    record = await resp.json()
    assert record["status"] == "canceled" and record["output"]["result"] is None
    assert (await client.delete(f"/predict/{prediction_id}")).status == 200, "idempotent"

    worker = worker_for(client, "w", job=prediction_id)
    await worker.step()
    await worker.step()
    assert models.calls[repr("never")] == 0
    assert (await (await client.get(f"/predict/{prediction_id}")).json())["status"] == "canceled"
    assert await pending(rds, client) == 0


@pytest.mark.modes("single", "cluster")
async def test_cancel_a_finished_job_is_409_and_unknown_is_404(make_client: ClientFactory) -> None:
    client = await make_client(model="tests.models:echo")
    prediction_id = await submit(client, "quick")
    await wait_final(client, prediction_id)
    resp = await client.delete(f"/predict/{prediction_id}")
    assert resp.status == 409
    assert (await resp.json())["status"] == "done"
    assert (await client.delete("/predict/00000000-0000-4000-8000-000000000000")).status == 404
    assert (await client.delete("/predict/nope")).status == 404


@pytest.mark.modes("single", "cluster")
async def test_bulk_submit_queues_all_in_order(make_client: ClientFactory, rds: Redis) -> None:
    api = await make_client(workers=0, model="tests.models:echo")
    resp = await api.post("/predict/batch", json={"inputs": [1, 2, 3]})
    assert resp.status == 202
    ids = (await resp.json())["prediction_ids"]
    assert len(ids) == 3
    # The stream holds them in input order (a worker reads them in that order).
    entries = await rds.xrange(partitions_of(api).of(ids[0]).stream)
    assert [(f[b"id"].decode(), f[b"input"]) for _, f in entries] == list(
        zip(ids, [b"1", b"2", b"3"], strict=True)
    )
    client = await make_client(model="tests.models:echo", consumer_name="worker")
    results = [(await wait_final(client, p))["output"] for p in ids]
    assert results == [{"input": n, "result": {"echo": n}} for n in (1, 2, 3)]


@pytest.mark.modes("single", "cluster")
async def test_bulk_submit_with_a_bad_item_reports_it_and_queues_nothing(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(workers=0)
    resp = await client.post("/predict/batch", json={"inputs": ["good", 5, "fine", ""]})
    assert resp.status == 422
    locs = [d["loc"][:2] for d in (await resp.json())["detail"]]
    assert locs == [["inputs", 1], ["inputs", 3]]
    assert await queued(rds, client) == 0
    for body in ({"inputs": []}, {"inputs": "x"}, {"other": [1]}):
        assert (await client.post("/predict/batch", json=body)).status == 422
    too_many = await make_client(workers=0, max_bulk=2)
    assert (await too_many.post("/predict/batch", json={"inputs": ["a", "b", "c"]})).status == 422


async def test_bulk_submit_that_does_not_fit_the_queue_queues_nothing(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(workers=0, max_queue=3)
    await submit(client, "one")
    resp = await client.post("/predict/batch", json={"inputs": ["a", "b", "c"]})
    assert resp.status == 429
    assert (await resp.json())["error"] == "The queue cannot take 3 more jobs; try again shortly."
    assert await rds.xlen(STREAM) == 1


@pytest.mark.modes("single", "cluster")
async def test_events_stream_each_status_until_final_then_close(
    make_client: ClientFactory,
) -> None:
    api = await make_client(workers=0, model="tests.models:gated")
    prediction_id = await submit(api, "watch me")
    resp = await api.get(f"/predict/{prediction_id}/events")
    assert resp.status == 200 and resp.content_type == "text/event-stream"

    async def next_event() -> dict[str, object]:
        data = b""
        while True:
            line = await resp.content.readline()
            if line.startswith(b"data: "):
                data = line[len(b"data: ") :]
            elif line == b"\n" and data:
                return json.loads(data)  # type: ignore[no-any-return]

    first = await asyncio.wait_for(next_event(), 10)
    assert first["status"] == "queued"
    await make_client(model="tests.models:gated", consumer_name="worker")  # starts it
    second = await asyncio.wait_for(next_event(), 10)
    assert second["status"] == "processing"
    models.release()
    third = await asyncio.wait_for(next_event(), 10)
    assert third["status"] == "done" and third["output"]["result"] == {"echo": "watch me"}
    assert await asyncio.wait_for(resp.content.read(), 10) == b"", "the stream ends"
    missing = await api.get("/predict/00000000-0000-4000-8000-000000000000/events")
    assert missing.status == 404


@pytest.mark.modes("single", "cluster")
async def test_an_idempotency_key_on_a_bulk_submit_answers_the_same_ids(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(workers=0)
    headers = {"Idempotency-Key": "batch-7"}
    first = await client.post("/predict/batch", json={"inputs": ["a", "b"]}, headers=headers)
    assert first.status == 202
    ids = (await first.json())["prediction_ids"]
    again = await client.post("/predict/batch", json={"inputs": ["a", "b"]}, headers=headers)
    assert again.status == 202
    assert (await again.json())["prediction_ids"] == ids
    assert await queued(rds, client) == 2, "nothing queued twice"
    for body in ({"inputs": ["a", "c"]}, {"inputs": ["a", "b", "c"]}, {"inputs": ["a"]}):
        other = await client.post("/predict/batch", json=body, headers=headers)
        assert other.status == 409, body
        assert "different request body" in (await other.json())["error"]
    assert await queued(rds, client) == 2
    bad = await client.post(
        "/predict/batch", json={"inputs": ["a"]}, headers={"Idempotency-Key": ""}
    )
    assert bad.status == 400


async def test_an_events_client_that_leaves_ends_its_stream_quietly(
    make_served: Any, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    _, base = await make_served(workers=0, model="tests.models:gated")
    route = "/predict/{prediction_id}/events"
    async with aiohttp.ClientSession(base) as http:
        async with http.post("/predict", json={"input": 1}, headers={"Async-Mode": "true"}) as r:
            prediction_id = (await r.json())["prediction_id"]
        resp = await http.get(f"/predict/{prediction_id}/events")
        assert (await resp.content.readline()).startswith(b"event: status")
        resp.close()  # the client goes away mid-stream
        await make_client(model="tests.models:gated", consumer_name="worker")  # status moves on

        async def ended() -> str | None:
            async with http.get("/metrics") as got:
                text = await got.text()
            return text if f'route="{route}"' in text else None

        text = await poll(ended)
    assert figure(text, "http_requests_total", route=route, method="GET", status="200") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    models.release()


async def test_an_abandoned_long_poll_is_let_go_within_seconds(make_served: Any) -> None:
    app, base = await make_served(workers=0)
    waiters = app[state.WAITERS]
    async with aiohttp.ClientSession(base) as http:
        async with http.post("/predict", json={"input": "x"}, headers={"Async-Mode": "true"}) as r:
            prediction_id = (await r.json())["prediction_id"]
        long_poll = asyncio.ensure_future(http.get(f"/predict/{prediction_id}?wait=30"))

        async def waiting() -> bool:
            return waiters.waited_for(prediction_id)

        await poll(waiting)
        long_poll.cancel()  # the client gives up and closes its connection
        with contextlib.suppress(asyncio.CancelledError):
            await long_poll

        async def let_go() -> bool:
            return not waiters.waited_for(prediction_id)

        await poll(let_go, within=5)
