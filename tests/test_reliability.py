"""Nothing lost: redelivery limits, deadlines, a deleted stream, backpressure,
idempotency, API keys."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from service.execution.executor import calls_running
from service.http import state
from service.job import Entry, NewJob, new_id

from . import models
from .helpers import (
    GROUP,
    KEYS,
    STREAM,
    ClientFactory,
    poll,
    scrape_until,
    submit,
    wait_final,
    worker_for,
)


async def test_a_poison_job_is_dead_lettered_after_max_deliveries(
    make_client: ClientFactory, rds: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.jobs.worker")
    client = await make_client(workers=0, model="tests.models:echo", max_deliveries=2)
    resp = await client.post(
        "/predict",
        json={"input": "poison"},
        headers={"Async-Mode": "true", "X-Request-ID": "req-poison"},
    )
    prediction_id = (await resp.json())["prediction_id"]
    # Two deliveries started and never finished (their consumers died).
    await rds.hset(KEYS.record(prediction_id), mapping={"status": "processing", "attempts": 2})
    await rds.xreadgroup(GROUP, "dead-consumer", {STREAM: ">"}, count=1)
    worker = worker_for(client, "rescuer", visibility_timeout=0.01)

    async def given_up() -> Any:
        await worker.step()
        record = await (await client.get(f"/predict/{prediction_id}")).json()
        return record if record["status"] == "failed" else None

    record = await poll(given_up)
    assert record["error"] == "gave up after 2 deliveries"
    assert models.calls[repr("poison")] == 0, "never run again"
    dead = await rds.xrange(KEYS.dead_letters)
    assert len(dead) == 1 and dead[0][1][b"reason"] == b"gave up after 2 deliveries"
    assert (await rds.xpending(STREAM, GROUP))["pending"] == 0
    # The metric an operator alerts on sees it.
    await scrape_until(client, queue_dead_letters=1, queue_pending=0, queue_stream_length=0)
    # So does the log: one line with the fields a log search filters on.
    (line,) = [r for r in caplog.records if getattr(r, "prediction_id", "") == prediction_id]
    assert line.getMessage() == f"job {prediction_id} dead-lettered"
    assert (line.outcome, line.request_id, line.model) == ("failed", "req-poison", "default")


async def test_a_job_past_its_deadline_fails_without_running(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(workers=0, model="tests.models:echo", job_timeout_seconds=5)
    prediction_id = await submit(client, "too late")
    await rds.hset(KEYS.record(prediction_id), "created_at", "1000.0")  # long ago
    worker = worker_for(client, "w")
    await worker.step()
    await worker.step()
    record = await wait_final(client, prediction_id)
    assert record["status"] == "failed" and record["error"].startswith("timed out")
    assert models.calls[repr("too late")] == 0


async def test_a_model_call_that_overruns_fails_the_job_and_a_sync_call_gets_504(
    make_client: ClientFactory,
) -> None:
    client = await make_client(model="tests.models:gated", job_timeout_seconds=0.5)
    resp = await client.post("/predict", json={"input": "slow"})
    assert resp.status == 504
    assert "longer than 0.5 s" in (await resp.json())["error"]
    prediction_id = await submit(client, "slow async")
    record = await wait_final(client, prediction_id)
    assert record["status"] == "failed" and record["error"].startswith("timed out")


async def test_the_time_limit_counts_from_submission_not_from_the_start_of_the_run(
    make_client: ClientFactory, rds: Redis
) -> None:
    # JOB_TIMEOUT_SECONDS includes the wait in the queue: a job that waited 1.5 s of its
    # 2.5 s has 1 s left, and a 2 s model call overruns it.
    client = await make_client(workers=0, model="tests.models:slow", job_timeout_seconds=2.5)
    prediction_id = await submit(client, "waited")
    reply = await rds.xreadgroup(GROUP, "w", {STREAM: ">"}, count=1)
    entry_id, fields = reply[0][1][0]
    entry = Entry(entry_id, prediction_id, "default", fields[b"input"], "", time.time() - 1.5)
    await worker_for(client, "w").process([entry])
    record = await wait_final(client, prediction_id)
    assert record["status"] == "failed" and record["error"].startswith("timed out")


async def test_a_deleted_stream_and_group_are_recreated(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(model="tests.models:echo")
    await rds.delete(STREAM)

    async def ready() -> bool:
        return (await client.get("/health/ready")).status == 200

    await poll(ready)
    prediction_id = await submit(client, "after the stream came back")
    assert (await wait_final(client, prediction_id))["status"] == "done"


async def test_a_full_queue_answers_429_and_writes_nothing(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(workers=0, max_queue=2)
    await submit(client, "one")
    await submit(client, "two")
    resp = await client.post("/predict", json={"input": "three"}, headers={"Async-Mode": "true"})
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "1"
    assert "error" in await resp.json()
    assert await rds.xlen(STREAM) == 2
    assert len(await rds.keys(KEYS.record("*"))) == 2


async def test_too_many_sync_predictions_answer_503(make_client: ClientFactory) -> None:
    client = await make_client(model="tests.models:gated", max_sync_in_flight=1)
    first = asyncio.create_task(client.post("/predict", json={"input": "holds the slot"}))

    async def running() -> bool:
        return models.started.is_set()

    await poll(running)
    resp = await client.post("/predict", json={"input": "one too many"})
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    models.release()
    assert (await first).status == 200


async def test_an_idempotency_key_gives_one_job_even_under_50_concurrent_submits(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(workers=0)
    headers = {"Async-Mode": "true", "Idempotency-Key": "order-17"}
    responses = await asyncio.gather(
        *(client.post("/predict", json={"input": "same"}, headers=headers) for _ in range(50))
    )
    assert {r.status for r in responses} == {202}
    ids = {(await r.json())["prediction_id"] for r in responses}
    assert len(ids) == 1
    assert await rds.xlen(STREAM) == 1
    again = await client.post("/predict", json={"input": "same"}, headers=headers)
    assert (await again.json())["prediction_id"] in ids
    other = await client.post("/predict", json={"input": "different"}, headers=headers)
    assert other.status == 409
    assert "different request body" in (await other.json())["error"]
    assert await rds.xlen(STREAM) == 1


async def test_an_idempotency_key_reads_the_input_not_its_key_order(
    make_client: ClientFactory,
) -> None:
    # The same JSON object with its keys in another order is the same request (clients'
    # serializers differ); another value is not.
    client = await make_client(workers=0, model="tests.models:echo")
    headers = {"Async-Mode": "true", "Idempotency-Key": "order-19"}

    async def post(value: Any) -> Any:
        return await client.post("/predict", json={"input": value}, headers=headers)

    first = await post({"sku": "A-1", "qty": [1, 2]})
    assert first.status == 202
    reordered = await post({"qty": [1, 2], "sku": "A-1"})
    assert reordered.status == 202
    assert (await reordered.json())["prediction_id"] == (await first.json())["prediction_id"]
    assert (await post({"sku": "A-1", "qty": [2, 1]})).status == 409


async def test_the_keys_of_single_and_bulk_submits_never_meet(make_client: ClientFactory) -> None:
    # A bulk submit keeps its key once per input; a single submit's key that looks like one
    # of those (the client chose it freely) is another key, in both orders.
    client = await make_client(workers=0, model="tests.models:echo")

    async def single(key: str, value: Any) -> Any:
        headers = {"Async-Mode": "true", "Idempotency-Key": key}
        return await client.post("/predict", json={"input": value}, headers=headers)

    async def bulk(key: str, values: list[Any]) -> Any:
        headers = {"Idempotency-Key": key}
        return await client.post("/predict/batch", json={"inputs": values}, headers=headers)

    first = await single("order-7#0", "a")
    assert first.status == 202
    batch = await bulk("order-7", ["a", "b"])
    assert batch.status == 202, await batch.text()
    assert (await first.json())["prediction_id"] not in (await batch.json())["prediction_ids"]
    batch = await bulk("order-8", ["a", "b"])
    ids = (await batch.json())["prediction_ids"]
    for key in ("order-8#0", "order-8#1", "order-8"):
        later = await single(key, "a")
        assert later.status == 202, await later.text()
        assert (await later.json())["prediction_id"] not in ids, key


async def test_durable_submits_with_no_replica_are_503_and_readiness_says_why(
    make_client: ClientFactory, rds: Redis
) -> None:
    # One redis-server, no replica: no submit can be confirmed, so none is accepted, and
    # the replica says it is not ready (a load balancer sends it nothing to refuse).
    client = await make_client(workers=0, durable_submit=True)
    resp = await client.post("/predict", json={"input": "x"}, headers={"Async-Mode": "true"})
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert "DURABLE_SUBMIT" in (await resp.json())["error"]
    ready = await client.get("/health/ready")
    assert ready.status == 503
    checks = (await ready.json())["checks"]
    assert checks["durable_submit"].startswith("refused: no replica confirmed a write")
    assert checks["writes"] == "ok" and checks["redis"] == "ok"
    plain = await make_client(workers=0, consumer_name="plain")
    ready = await plain.get("/health/ready")
    assert ready.status == 200 and "durable_submit" not in (await ready.json())["checks"]


async def test_api_key_guards_every_route_but_health_metrics_and_docs(
    make_client: ClientFactory,
) -> None:
    client = await make_client(api_key="s3cret", workers=0)
    some_id = "00000000-0000-4000-8000-000000000000"
    protected = [
        ("POST", "/predict"),
        ("POST", "/predict/batch"),
        ("GET", f"/predict/{some_id}"),
        ("DELETE", f"/predict/{some_id}"),
        ("GET", f"/predict/{some_id}/events"),
        ("GET", f"/predict/{some_id}/files/input.png"),
        ("GET", "/models"),
        ("GET", "/models/default"),
        ("POST", "/models/default/predict"),
        ("POST", "/models/default/predict/batch"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/default"),
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/files"),
        ("GET", "/v1/files/file-x"),
        ("DELETE", "/v1/files/file-x"),
        ("GET", "/v1/files/file-x/content"),
        ("POST", "/v1/batches"),
        ("GET", "/v1/batches/batch_x"),
        ("POST", "/v1/batches/batch_x/cancel"),
        # The dashboard's data (its page asks for the key).
        ("GET", "/dashboard/api/overview"),
        ("GET", "/dashboard/api/jobs"),
        ("GET", f"/dashboard/api/jobs/{some_id}"),
        ("GET", "/dashboard/api/models"),
        ("GET", "/dashboard/api/tenants"),
    ]
    # Every route of the app is in one list or the other: a new route must be named here.
    public = [
        ("GET", "/health/live"),
        ("GET", "/health/ready"),
        ("GET", "/metrics"),
        ("GET", "/dashboard"),
        ("GET", "/dashboard/assets/dashboard.js"),
    ]
    # And the last route, which answers what no other matches (404/405 without the key).
    unmatched = ("*", "/{path}")
    # The admin routes need ADMIN_API_KEY instead (tests/test_admin.py).
    admin = {
        ("GET", "/admin/dead-letters"),
        ("POST", "/admin/dead-letters/replay"),
        ("POST", "/admin/dead-letters/{prediction_id}/replay"),
        ("DELETE", "/admin/dead-letters"),
        ("DELETE", "/admin/dead-letters/{prediction_id}"),
    }
    registered = {
        (r.method, r.resource.canonical)
        for r in client.server.app.router.routes()
        if r.resource is not None and not r.resource.canonical.startswith("/docs")
    }
    assert len(registered) == len(protected) + len(public) + len(admin) + 1, registered
    assert unmatched in registered and admin <= registered
    for method, path in protected:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic s3cret"}):
            denied = await client.request(method, path, json={"input": "hi"}, headers=headers)
            assert denied.status == 401, (method, path, headers)
            assert denied.headers["WWW-Authenticate"] == "Bearer"
            assert "error" in await denied.json()
        allowed = await client.request(
            method, path, json={"input": "hi"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert allowed.status != 401, (method, path)
    for method, path in public:
        assert (await client.request(method, path)).status == 200, path
    assert (await client.get("/docs/")).status == 200
    assert (await client.get("/no/such/route")).status == 404
    assert (await client.get("/predict/batch")).status == 405
    assert (await client.get("/docs/swagger.json")).status == 200
    ok = await client.post(
        "/predict", json={"input": "hi"}, headers={"Authorization": "Bearer s3cret"}
    )
    assert ok.status == 200
    # An unknown route is still a plain 404, not a 401.
    assert (await client.get("/nowhere")).status == 404


async def test_finished_entries_are_trimmed_and_unfinished_ones_kept(
    make_client: ClientFactory, rds: Redis
) -> None:
    api = await make_client(workers=0, model="tests.models:echo")
    ids = [await submit(api, i) for i in range(5)]
    await rds.xreadgroup(GROUP, "busy", {STREAM: ">"}, count=2)  # in flight elsewhere
    worker = worker_for(api, "w")
    await worker.step()
    await worker.step()  # the three undelivered ones
    assert await rds.xlen(STREAM) == 2, "only the two unacked entries remain"
    done = [await wait_final(api, p) for p in ids[2:]]
    assert all(r["status"] == "done" for r in done)


async def test_a_long_job_keeps_its_entry_from_being_reclaimed(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(model="tests.models:gated", visibility_timeout_seconds=0.3)
    prediction_id = await submit(client, "long")

    async def running() -> bool:
        return models.started.is_set()

    await poll(running)
    rival = worker_for(client, "rival", visibility_timeout=0.3)
    await rival.step()  # own pending: none
    for _ in range(6):  # well past the visibility timeout, while the job still runs
        await rival.step()
        await asyncio.sleep(0.1)
    pending = await rds.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert [p["consumer"] for p in pending] == [b"test-0"], "still held by its worker"
    models.release()
    record = await wait_final(client, prediction_id)
    assert record["status"] == "done" and record["attempts"] == 1


async def test_readiness_turns_503_when_the_replica_starts_stopping(
    make_client: ClientFactory,
) -> None:
    client = await make_client(workers=0)
    assert (await client.get("/health/ready")).status == 200
    await client.server.app.shutdown()  # what SIGTERM starts
    resp = await client.get("/health/ready")
    assert resp.status == 503
    assert (await resp.json())["checks"]["shutting_down"] == "yes"


async def test_work_a_stopping_replica_could_not_finish_goes_back_for_others(
    make_client: ClientFactory, rds: Redis
) -> None:
    stopping = await make_client(model="tests.models:gated", shutdown_grace_seconds=0.2)
    prediction_id = await submit(stopping, "unfinished")

    async def running() -> bool:
        return models.started.is_set()

    await poll(running)
    await stopping.close()  # grace runs out while the model still runs
    # Handed back: undelivered again (not pending on the stopped consumer) and queued.
    assert (await rds.xpending(STREAM, GROUP))["pending"] == 0
    assert await rds.xlen(STREAM) == 1
    assert await rds.hget(KEYS.record(prediction_id), "status") == b"queued"

    models.release()
    # The default visibility timeout (60 s): the job is read, not reclaimed.
    other = await make_client(model="tests.models:echo", consumer_name="other")
    record = await wait_final(other, prediction_id)
    assert record["status"] == "done"
    assert record["output"]["result"] == {"echo": "unfinished"}
    assert record["attempts"] == 2


async def test_a_stopping_replica_hands_a_whole_batch_back_and_logs_no_error(
    make_client: ClientFactory, rds: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # A normal stop is no error: the batch's callers are all failed with ShuttingDown, and
    # each of those failures is seen (none is left for asyncio to report as never
    # retrieved).
    # OneAtATime: the three run as one model call, held until the test opens the gate (a
    # thread left blocked on a later item would outlive the test).
    api = await make_client(model="tests.models:OneAtATime", workers=0)
    ids = [await submit(api, text) for text in ("hold", "b", "c")]
    stopping = await make_client(
        model="tests.models:OneAtATime", shutdown_grace_seconds=0.2, max_batch_size=4
    )
    await poll(lambda: asyncio.to_thread(models.started.wait, 0.1))
    caplog.set_level(logging.WARNING)
    await stopping.close()
    models.release()  # the abandoned call ends; then its batch's futures can be collected

    async def call_ended() -> bool:
        batches = [t for t in asyncio.all_tasks() if t.get_coro().__name__ == "_run_batch"]
        return calls_running() == 0 and not batches

    await poll(call_ended)
    gc.collect()  # a future never retrieved is reported when it is collected
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert any("handed 3 unfinished jobs back" in r.getMessage() for r in caplog.records)
    assert (await rds.xpending(STREAM, GROUP))["pending"] == 0
    assert sorted(f[b"id"].decode() for _, f in await rds.xrange(STREAM)) == sorted(ids)


async def test_a_stopping_replica_acks_the_entries_of_its_batch_that_were_not_to_run(
    make_client: ClientFactory, rds: Redis
) -> None:
    # One batch of two entries: a job canceled before it started (not run, only acked) and
    # a job that runs past the grace period (handed back). Stopping leaves nothing pending.
    api = await make_client(model="tests.models:gated", workers=0)
    canceled = await submit(api, "canceled")
    running = await submit(api, "running")
    assert (await api.delete(f"/predict/{canceled}")).status == 200
    stopping = await make_client(
        model="tests.models:gated", shutdown_grace_seconds=0.2, max_batch_size=2
    )
    await poll(lambda: asyncio.to_thread(models.started.wait, 0.1))
    await stopping.close()
    assert (await rds.xpending(STREAM, GROUP))["pending"] == 0, "nothing left held"
    entries = await rds.xrange(STREAM)
    assert [fields[b"id"].decode() for _, fields in entries] == [running], "only it went back"
    assert await rds.hget(KEYS.record(canceled), "status") == b"canceled"


async def test_a_submit_retried_after_it_landed_never_resets_the_job(
    make_client: ClientFactory, rds: Redis
) -> None:
    # redis-py retries a command after a timeout, the submit script included: the first
    # call may have landed (and the job even finished) before the retry arrives.
    client = await make_client(model="tests.models:echo", webhook_allow_private=True)
    queue = client.server.app[state.QUEUE]
    job = NewJob(new_id(), "default", orjson.dumps("once"), "rid", "", "", "", "")
    assert await queue.submit(job) == job.prediction_id
    record = await wait_final(client, job.prediction_id)
    assert record["status"] == "done"
    for retry in (queue.submit(job), queue.submit_all([job])):
        assert await retry in (job.prediction_id, [job.prediction_id])
    assert await wait_final(client, job.prediction_id) == record, "left as it was"
    assert await rds.xlen(STREAM) == 0, "queued once"
    assert models.calls[repr("once")] == 1
