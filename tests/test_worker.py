"""The worker's single pass, reclaiming idle entries, redelivery, and a free event loop."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from service.http import state
from service.job import Entry, NewJob, Outcome, new_id

from . import models
from .helpers import (
    GROUP,
    KEYS,
    STREAM,
    ClientFactory,
    pending,
    poll,
    record,
    submit,
    wait_final,
    worker_for,
)


async def test_step_runs_a_batch_in_one_model_call_per_item(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(workers=0, model="tests.models:echo")
    ids = [await submit(client, f"item {i}") for i in range(3)]
    worker = worker_for(client, "stepper")
    assert await worker.step() == 0  # first pass: own pending, none yet
    assert await worker.step() == 3
    for i, prediction_id in enumerate(ids):
        fields = await record(rds, prediction_id)
        assert fields[b"status"] == b"done"
        assert fields[b"result"] == f'{{"echo":"item {i}"}}'.encode()
    assert models.calls == {repr(f"item {i}"): 1 for i in range(3)}
    assert (await rds.xpending(STREAM, GROUP))["pending"] == 0


async def test_a_new_worker_first_works_off_its_own_pending_entries(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(workers=0, model="tests.models:echo")
    prediction_id = await submit(client, "left behind")
    # The same consumer read it in an earlier life and died before acking.
    await rds.xreadgroup(GROUP, "restarted", {STREAM: ">"}, count=10)
    worker = worker_for(client, "restarted")
    assert await worker.step() == 1
    assert (await record(rds, prediction_id))[b"status"] == b"done"


async def test_entries_idle_in_a_dead_consumer_are_reclaimed(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(workers=0, model="tests.models:echo")
    prediction_id = await submit(client, "orphan")
    await rds.xreadgroup(GROUP, "ghost", {STREAM: ">"}, count=10)
    worker = worker_for(client, "rescuer", visibility_timeout=0.05)

    async def done() -> bool:
        await worker.step()
        return (await record(rds, prediction_id)).get(b"status") == b"done"

    await poll(done)
    assert models.calls[repr("orphan")] == 1
    pending = await rds.xpending(STREAM, GROUP)
    assert pending["pending"] == 0


async def test_a_redelivered_final_job_is_acked_without_running_again(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(workers=0, model="tests.models:echo")
    prediction_id = await submit(client, "once")
    worker = worker_for(client, "w")
    reply = await rds.xreadgroup(GROUP, "w", {STREAM: ">"}, count=1)
    entry_id, fields = reply[0][1][0]
    entry = Entry(entry_id, prediction_id, fields[b"model"].decode(), fields[b"input"])
    # An earlier delivery finished the job, and its ack was lost: the record is final,
    # the entry is still pending.
    await rds.hset(
        KEYS.record(prediction_id),
        mapping={"status": "done", "result": '{"echo":"earlier"}', "finished_at": 1},
    )
    first = await record(rds, prediction_id)
    assert (await rds.xpending(STREAM, GROUP))["pending"] == 1
    await worker.process([entry])  # the entry comes back
    assert await record(rds, prediction_id) == first, "the final record is left as it was"
    assert models.calls[repr("once")] == 0, "not run again"
    assert (await rds.xpending(STREAM, GROUP))["pending"] == 0, "but acked"
    assert await rds.xlen(STREAM) == 0


async def test_a_two_second_model_call_does_not_delay_a_get(make_client: ClientFactory) -> None:
    client = await make_client(workers=0, model="tests.models:slow")
    post = asyncio.create_task(client.post("/predict", json={"input": "slow"}))

    async def model_running() -> bool:
        return models.started.is_set()

    await poll(model_running)
    began = time.monotonic()
    resp = await client.get(f"/predict/{uuid.uuid4()}")
    elapsed = time.monotonic() - began
    assert resp.status == 404
    assert not post.done(), "the GET should finish while the model is still running"
    assert elapsed < models.SLOW_SECONDS / 2
    assert (await post).status == 200


async def test_a_late_second_finish_never_rewrites_a_final_record(
    make_client: ClientFactory, rds: Redis
) -> None:
    # Two replicas ran the same entry (the first was thought dead and its batch reclaimed):
    # the first finish wins, the late one changes nothing, and the entry is acked once.
    client = await make_client(workers=0, model="tests.models:echo")
    prediction_id = await submit(client, "twice")
    reply = await rds.xreadgroup(GROUP, "slow", {STREAM: ">"}, count=1)
    entry_id, fields = reply[0][1][0]
    entry = Entry(entry_id, prediction_id, "default", fields[b"input"])
    keys = client.server.app[state.PARTITIONS][0]
    consumer = worker_for(client, "slow").consumer
    await client.server.app[state.RESULTS].mark(keys, [(prediction_id, entry_id)], time.time())
    await consumer.finish(keys, [(entry, Outcome(ok=True, payload=b'"first"'))], [entry], 1.0)
    first = await record(rds, prediction_id)
    assert first[b"status"] == b"done" and first[b"result"] == b'"first"'
    await consumer.finish(keys, [(entry, Outcome(ok=False, error="late"))], [entry], 2.0)
    assert await record(rds, prediction_id) == first, "done did not turn into failed"
    assert (await rds.xpending(STREAM, GROUP))["pending"] == 0


async def test_without_a_job_time_limit_queued_jobs_still_run(make_client: ClientFactory) -> None:
    client = await make_client(model="tests.models:echo", job_timeout_seconds=0)
    record = await wait_final(client, await submit(client, "no limit"))
    assert (record["status"], record["output"]["result"]) == ("done", {"echo": "no limit"})


async def test_jobs_that_cannot_run_here_fail_alone_and_say_why(
    make_client: ClientFactory, rds: Redis
) -> None:
    # Queued by another replica, or before a deploy: a model this replica does not serve
    # and an input its model no longer accepts. Each fails with the reason; the jobs of
    # the same batch around them run.
    client = await make_client(workers=0, model="tests.models:Fragile")
    queue = client.server.app[state.QUEUE]
    jobs = [
        NewJob(new_id(), model, orjson.dumps(value), "", "", "", "", "")
        for model, value in (("gone", "a"), ("default", "b"), ("default", 7), ("default", "d"))
    ]
    await queue.submit_all(jobs)  # one partition: one batch, in this order
    worker = worker_for(client, "w")

    async def finished() -> list[dict[str, Any]] | None:
        await worker.step()
        records = [await (await client.get(f"/predict/{j.prediction_id}")).json() for j in jobs]
        return records if all(r["status"] in ("done", "failed") for r in records) else None

    gone, fine, invalid, last = await poll(finished)
    assert (fine["status"], last["status"]) == ("done", "done")
    assert (gone["status"], invalid["status"]) == ("failed", "failed")
    assert gone["error"] == "Unknown model 'gone'."
    assert invalid["error"] == "The input does not fit the schema of model 'default'."


async def test_a_stream_deleted_under_a_blocked_read_is_recreated_without_an_error(
    make_client: ClientFactory, rds: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # Redis 7 answers a read blocked on a stream that is deleted with UNBLOCKED (6.2 keeps
    # it blocked until its time is up, then NOGROUP): either way the worker makes the
    # stream and group again, says so in a warning, and goes on with new jobs.
    caplog.set_level(logging.WARNING)
    client = await make_client(model="tests.models:echo", read_block_ms=2000)

    async def worker_blocked() -> bool:
        return any(c.get("cmd") == "xreadgroup" for c in await rds.client_list())

    await poll(worker_blocked)
    await rds.delete(STREAM)

    async def recreated() -> bool:
        return any("streams and groups exist" in r.getMessage() for r in caplog.records)

    await poll(recreated)
    prediction_id = await submit(client, "after the stream was deleted")
    assert (await wait_final(client, prediction_id))["status"] == "done"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_entries_read_together_stay_claimed_while_they_wait_their_turn(
    make_client: ClientFactory, rds: Redis
) -> None:
    # One blocking read hands a worker up to a batch from each priority stream; it runs
    # them one after another. Those waiting their turn are held too: another consumer must
    # not reclaim them as idle and run them a second time.
    client = await make_client(workers=0, model="tests.models:paced")
    worker = worker_for(client, "holder", visibility_timeout=0.9)
    assert await worker.step() == 0  # own pending: none
    assert await worker.step() == 0  # a short read: the next one blocks on every stream
    for priority in ("high", "normal", "low"):
        inputs = [f"{priority} {i}" for i in range(3)]
        resp = await client.post("/predict/batch", json={"inputs": inputs, "priority": priority})
        assert resp.status == 202
    holding = asyncio.create_task(worker.step())  # 3 batches of 0.9 s, one after another

    async def all_read() -> bool:
        return await pending(rds, client) == 9

    await poll(all_read)
    rival = worker_for(client, "rival", visibility_timeout=0.9)
    while not holding.done():
        await rival.step()
    assert holding.result() == 9
    assert sorted(models.calls.values()) == [1] * 9, models.calls
