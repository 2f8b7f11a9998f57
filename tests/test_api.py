"""The contract of docs/api.md, end to end against a real Redis (each test names the
section it holds: "Predicting", "Reading a job", "Errors")."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from redis.asyncio import Redis

from service.http import state

from .helpers import ClientFactory, pending, poll, queued, record_key, submit, wait_final

JSON = {"Content-Type": "application/json"}
ASYNC = {**JSON, "Async-Mode": "true"}


@pytest.mark.modes("single", "cluster", "sentinel")
async def test_sync_predict_answers_input_and_sentiment(make_client: ClientFactory) -> None:
    client = await make_client()
    resp = await client.post("/predict", json={"input": "I love this product!"})
    assert resp.status == 200
    body = await resp.json()
    assert body["input"] == "I love this product!"
    assert body["result"]["label"] == "positive"
    assert set(body["result"]["scores"]) == {"neg", "neu", "pos", "compound"}


@pytest.mark.parametrize("header", ["false", "FALSE", "False"])
async def test_async_mode_false_is_sync_in_any_case(
    make_client: ClientFactory, header: str
) -> None:
    client = await make_client()
    resp = await client.post("/predict", json={"input": "awful"}, headers={"Async-Mode": header})
    assert resp.status == 200
    assert (await resp.json())["result"]["label"] == "negative"


@pytest.mark.modes("single", "cluster", "sentinel")
async def test_async_submit_is_readable_at_once_as_processing(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(workers=0)
    resp = await client.post(
        "/predict", json={"input": "queued text"}, headers={"Async-Mode": "TRUE"}
    )
    assert resp.status == 202
    body = await resp.json()
    prediction_id = body["prediction_id"]
    assert uuid.UUID(prediction_id).version == 4
    assert body["message"] == "Request received. Processing asynchronously."
    assert resp.headers["Location"] == f"/predict/{prediction_id}"

    got = await client.get(f"/predict/{prediction_id}")
    assert got.status == 200
    record = await got.json()
    assert record["prediction_id"] == prediction_id
    assert record["status"] == "queued"
    assert record["output"] == {"input": "queued text", "result": "processing"}
    assert record["model"] == "default"
    assert await queued(rds, client) == 1


@pytest.mark.modes("single", "cluster")
async def test_job_goes_queued_processing_done(make_client: ClientFactory) -> None:
    from . import models

    api = await make_client(workers=0, model="tests.models:gated")
    prediction_id = await submit(api, "slow text")
    assert (await (await api.get(f"/predict/{prediction_id}")).json())["status"] == "queued"

    await make_client(model="tests.models:gated")  # a replica with a worker

    async def processing() -> bool:
        body = await (await api.get(f"/predict/{prediction_id}")).json()
        return body["status"] == "processing" and body["output"]["result"] == "processing"

    await poll(processing)
    models.release()
    record = await wait_final(api, prediction_id)
    assert record["status"] == "done"
    assert record["output"] == {"input": "slow text", "result": {"echo": "slow text"}}
    assert record["attempts"] == 1
    assert record["created_at"] <= record["started_at"] <= record["finished_at"]


@pytest.mark.modes("single", "cluster")
async def test_record_and_queue_entry_carry_a_ttl_and_are_acked(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(result_ttl_seconds=120, workers=0)
    prediction_id = await submit(client, "fine")
    assert 0 < await rds.ttl(record_key(client, prediction_id)) <= 120
    assert await queued(rds, client) == 1
    await make_client(result_ttl_seconds=120, consumer_name="worker")
    await wait_final(client, prediction_id)
    assert 0 < await rds.ttl(record_key(client, prediction_id)) <= 120
    assert await pending(rds, client) == 0
    # Acked and deleted in the same call: the stream keeps only work waiting or running.
    assert await queued(rds, client) == 0


@pytest.mark.parametrize("raw", [str(uuid.uuid4()), "not-a-uuid", "123"])
async def test_unknown_prediction_is_404(make_client: ClientFactory, raw: str) -> None:
    client = await make_client()
    resp = await client.get(f"/predict/{raw}")
    assert resp.status == 404
    assert await resp.json() == {"error": "Prediction ID not found."}


async def test_model_failure_sync_is_500_json(make_client: ClientFactory) -> None:
    client = await make_client(model="tests.models:Fragile")
    resp = await client.post("/predict", json={"input": "boom"})
    assert resp.status == 500
    body = await resp.json()
    assert body["error"].startswith("Prediction failed: ")
    assert "the model exploded" in body["error"]


async def test_an_unexpected_error_is_a_plain_500_logged_with_its_traceback(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(model="tests.models:BuggyCheck")
    caplog.set_level(logging.ERROR, logger="service.http.answers")
    resp = await client.post("/predict", json={"input": "bug"})
    assert resp.status == 500
    assert await resp.json() == {"error": "Internal server error."}  # nothing of the bug
    (line,) = caplog.records
    assert line.getMessage() == "unhandled error in POST /predict"
    assert line.exc_info is not None and "a bug in the input check" in str(line.exc_info[1])
    fine = await client.post("/predict", json={"input": "fine"})
    assert fine.status == 200 and (await fine.json())["result"] == "fine"


async def test_reads_of_many_jobs_in_several_partitions_come_back_each_to_its_own(
    make_client: ClientFactory,
) -> None:
    # Concurrent GETs are read together, one script call per partition: every answer must
    # go back to the request that asked, whichever partition its job is in.
    client = await make_client(model="tests.models:echo", queue_partitions=3)
    ids = [await submit(client, f"job {i}") for i in range(12)]
    partitions = client.server.app[state.PARTITIONS]
    assert len({partitions.of(p).index for p in ids}) > 1
    records = [await wait_final(client, p) for p in ids]
    assert [r["output"]["input"] for r in records] == [f"job {i}" for i in range(12)]
    answers = await asyncio.gather(*(client.get(f"/predict/{p}") for p in ids * 2))
    got = [(await a.json())["prediction_id"] for a in answers]
    assert got == ids * 2


@pytest.mark.modes("single", "cluster")
async def test_model_failure_async_fails_the_job_and_the_worker_goes_on(
    make_client: ClientFactory,
) -> None:
    client = await make_client(model="tests.models:Fragile")
    bad = await submit(client, "boom")
    good = await submit(client, "fine")
    failed = await wait_final(client, bad)
    assert failed["status"] == "failed"
    assert "the model exploded" in failed["error"]
    assert failed["output"] == {"input": "boom", "result": None}
    done = await wait_final(client, good)
    assert done["status"] == "done"
    assert done["output"]["result"] == {"length": 4}


@pytest.mark.modes("single", "cluster", "sentinel")
async def test_two_replicas_share_one_queue(make_client: ClientFactory) -> None:
    """Submit to an API-only replica; the other replica's worker runs it; both can read it."""
    api_only = await make_client(workers=0, consumer_name="api")
    prediction_ids = [await submit(api_only, f"text {i}") for i in range(5)]
    worker_replica = await make_client(workers=2, consumer_name="worker")
    for prediction_id in prediction_ids:
        record = await wait_final(api_only, prediction_id)
        assert record["status"] == "done"
        again = await (await worker_replica.get(f"/predict/{prediction_id}")).json()
        assert again == record
