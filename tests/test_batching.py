"""Dynamic batching: results go back to their own request or job; a bad item fails alone."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from . import models
from .conftest import ClientFactory
from .test_api import submit, wait_final
from .test_worker import worker_for


async def test_concurrent_sync_requests_share_one_batch_call(make_client: ClientFactory) -> None:
    client = await make_client(
        model="tests.models:BatchEcho", max_batch_size=10, max_batch_delay_ms=200
    )
    texts = [f"text {i}" for i in range(10)]
    responses = await asyncio.gather(
        *(client.post("/predict", json={"input": text}) for text in texts)
    )
    bodies = [await r.json() for r in responses]
    assert [b["result"] for b in bodies] == [{"echo": t} for t in texts]
    assert [b["input"] for b in bodies] == texts
    assert models.batch_sizes == [10]  # full batch: sent at once, not after the delay


async def test_a_bad_item_fails_alone_in_a_sync_batch(make_client: ClientFactory) -> None:
    client = await make_client(
        model="tests.models:BatchEcho", max_batch_size=5, max_batch_delay_ms=200
    )
    texts = ["a", "b", "bad", "c", "d"]
    responses = await asyncio.gather(
        *(client.post("/predict", json={"input": text}) for text in texts)
    )
    statuses = [r.status for r in responses]
    assert statuses == [200, 200, 500, 200, 200]
    assert "bad input for this model" in (await responses[2].json())["error"]
    assert [(await r.json())["result"] for i, r in enumerate(responses) if i != 2] == [
        {"echo": t} for t in ["a", "b", "c", "d"]
    ]
    assert models.batch_sizes == [5]  # one batch call, then the items one by one


async def test_a_partial_batch_goes_after_the_delay(make_client: ClientFactory) -> None:
    client = await make_client(model="tests.models:BatchEcho", max_batch_size=100)
    responses = await asyncio.gather(
        *(client.post("/predict", json={"input": "x"}) for _ in range(3))
    )
    assert [r.status for r in responses] == [200, 200, 200]
    assert sum(models.batch_sizes) <= 3  # single items do not call predict_batch


async def test_a_worker_batch_maps_results_to_ids_and_fails_only_the_bad_job(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(workers=0, model="tests.models:BatchEcho", max_batch_size=8)
    texts = ["one", "two", "bad", "four", "five", "six", "seven", "eight"]
    ids = [await submit(client, text) for text in texts]
    worker = worker_for(client, "batcher")
    await worker.step()  # own pending: none
    assert await worker.step() == 8
    assert models.batch_sizes[0] == 8
    for prediction_id, text in zip(ids, texts, strict=True):
        record = await wait_final(client, prediction_id)
        if text == "bad":
            assert record["status"] == "failed"
            assert "bad input for this model" in record["error"]
        else:
            assert record["status"] == "done"
            assert record["output"] == {"input": text, "result": {"echo": text}}
    assert (await rds.xpending("predictions", "workers"))["pending"] == 0


async def test_concurrent_async_submits_are_all_recorded_and_queued(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(workers=0)
    responses = await asyncio.gather(
        *(
            client.post("/predict", json={"input": f"t{i}"}, headers={"Async-Mode": "true"})
            for i in range(50)
        )
    )
    ids = {(await r.json())["prediction_id"] for r in responses}
    assert len(ids) == 50
    assert await rds.xlen("predictions") == 50
    for prediction_id in ids:
        assert await rds.hget(f"prediction:{prediction_id}", "status") == b"queued"


async def test_a_lone_caller_does_not_wait_for_the_batch_delay(make_client: ClientFactory) -> None:
    client = await make_client(model="tests.models:BatchEcho", max_batch_delay_ms=60_000)
    for text in ("first", "second"):
        resp = await asyncio.wait_for(client.post("/predict", json={"input": text}), 10)
        assert (await resp.json())["result"] == {"echo": text}
