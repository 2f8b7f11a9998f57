"""The worker's single pass, reclaiming idle entries, redelivery, and a free event loop."""

from __future__ import annotations

import asyncio
import time
import uuid

from redis.asyncio import Redis

from service import state
from service.job import Entry
from service.models import Outcome

from . import models
from .helpers import ClientFactory, poll, record, submit, worker_for


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
    assert (await rds.xpending("predictions", "workers"))["pending"] == 0


async def test_a_new_worker_first_works_off_its_own_pending_entries(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(workers=0, model="tests.models:echo")
    prediction_id = await submit(client, "left behind")
    # The same consumer read it in an earlier life and died before acking.
    await rds.xreadgroup("workers", "restarted", {"predictions": ">"}, count=10)
    worker = worker_for(client, "restarted")
    assert await worker.step() == 1
    assert (await record(rds, prediction_id))[b"status"] == b"done"


async def test_entries_idle_in_a_dead_consumer_are_reclaimed(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(workers=0, model="tests.models:echo")
    prediction_id = await submit(client, "orphan")
    await rds.xreadgroup("workers", "ghost", {"predictions": ">"}, count=10)
    worker = worker_for(client, "rescuer", visibility_timeout=0.05)

    async def done() -> bool:
        await worker.step()
        return (await record(rds, prediction_id)).get(b"status") == b"done"

    await poll(done)
    assert models.calls[repr("orphan")] == 1
    pending = await rds.xpending("predictions", "workers")
    assert pending["pending"] == 0


async def test_a_redelivered_final_job_is_acked_without_running_again(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(workers=0, model="tests.models:echo")
    prediction_id = await submit(client, "once")
    worker = worker_for(client, "w")
    reply = await rds.xreadgroup("workers", "w", {"predictions": ">"}, count=1)
    entry_id, fields = reply[0][1][0]
    entry = Entry(entry_id, prediction_id, fields[b"model"].decode(), fields[b"input"])
    # An earlier delivery finished the job, and its ack was lost: the record is final,
    # the entry is still pending.
    await rds.hset(
        f"prediction:{prediction_id}",
        mapping={"status": "done", "result": '{"echo":"earlier"}', "finished_at": 1},
    )
    first = await record(rds, prediction_id)
    assert (await rds.xpending("predictions", "workers"))["pending"] == 1
    await worker.process([entry])  # the entry comes back
    assert await record(rds, prediction_id) == first, "the final record is left as it was"
    assert models.calls[repr("once")] == 0, "not run again"
    assert (await rds.xpending("predictions", "workers"))["pending"] == 0, "but acked"
    assert await rds.xlen("predictions") == 0


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
    reply = await rds.xreadgroup("workers", "slow", {"predictions": ">"}, count=1)
    entry_id, fields = reply[0][1][0]
    entry = Entry(entry_id, prediction_id, "default", fields[b"input"])
    results, keys = client.server.app[state.RESULTS], client.server.app[state.PARTITIONS][0]
    await results.mark_processing(keys, [(prediction_id, entry_id)], time.time())
    await results.finish_and_ack(
        keys, [(entry, Outcome(ok=True, payload=b'"first"'))], [entry], 1.0
    )
    first = await record(rds, prediction_id)
    assert first[b"status"] == b"done" and first[b"result"] == b'"first"'
    await results.finish_and_ack(keys, [(entry, Outcome(ok=False, error="late"))], [entry], 2.0)
    assert await record(rds, prediction_id) == first, "done did not turn into failed"
    assert (await rds.xpending("predictions", "workers"))["pending"] == 0
