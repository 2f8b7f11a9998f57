"""Dynamic batching: results go back to their own request or job; a bad item fails alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from service.errors import ModelLoadError
from service.http import state
from service.models.registry import model_configs
from service.settings import Settings

from . import models
from .helpers import GROUP, KEYS, STREAM, ClientFactory, poll, submit, wait_final, worker_for


async def test_concurrent_callers_share_one_batch_call(make_client: ClientFactory) -> None:
    client = await make_client(model="tests.models:BatchEcho", max_batch_size=10)
    batcher = client.server.app[state.BATCHERS]["default"]
    texts = [f"text {i}" for i in range(10)]
    outcomes = await asyncio.gather(*(batcher.run_one(text) for text in texts))
    assert [o.payload for o in outcomes] == [f'{{"echo":"{t}"}}'.encode() for t in texts]
    assert models.batch_sizes == [10]  # one call for the ten callers of the same turn


async def test_a_bad_item_fails_alone_in_a_batch(make_client: ClientFactory) -> None:
    client = await make_client(model="tests.models:BatchEcho", max_batch_size=5)
    batcher = client.server.app[state.BATCHERS]["default"]
    outcomes = await asyncio.gather(*(batcher.run_one(t) for t in ["a", "b", "bad", "c", "d"]))
    assert [o.ok for o in outcomes] == [True, True, False, True, True]
    assert "bad input for this model" in outcomes[2].error
    assert models.batch_sizes == [5]  # one batch call, then the items one by one


async def test_concurrent_sync_requests_get_their_own_results(make_client: ClientFactory) -> None:
    client = await make_client(model="tests.models:BatchEcho", max_batch_size=8)
    texts = ["a", "b", "bad", "c", "d", "e", "f", "g", "h", "i"]
    responses = await asyncio.gather(
        *(client.post("/predict", json={"input": text}) for text in texts)
    )
    assert [r.status for r in responses] == [500 if t == "bad" else 200 for t in texts]
    for text, resp in zip(texts, responses, strict=True):
        if text != "bad":
            assert await resp.json() == {"input": text, "result": {"echo": text}}


async def test_a_partial_batch_goes_after_the_delay(make_client: ClientFactory) -> None:
    client = await make_client(
        model="tests.models:BatchEcho", max_batch_size=100, max_batch_delay_ms=200
    )
    batcher = client.server.app[state.BATCHERS]["default"]
    loop = asyncio.get_running_loop()
    # A crowd of ten sets the expected batch size...
    await asyncio.gather(*(batcher.run_one(f"crowd {i}") for i in range(10)))
    assert models.batch_sizes == [10]
    # ...so three callers of one turn wait for more, up to the delay, then go together.
    began = loop.time()
    three = [batcher.run_one(f"few {i}") for i in range(3)]
    done, _ = await asyncio.wait(three, timeout=5)
    elapsed = loop.time() - began
    assert len(done) == 3, "the partial batch must go once the delay is up"
    assert [o.result().ok for o in three] == [True, True, True]
    assert models.batch_sizes == [10, 3], "one call for the three"
    assert 0.15 <= elapsed < 1.0, f"went after {elapsed:.3f} s with a 0.2 s delay"


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
    assert (await rds.xpending(STREAM, GROUP))["pending"] == 0


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
    assert await rds.xlen(STREAM) == 50
    for prediction_id in ids:
        assert await rds.hget(KEYS.record(prediction_id), "status") == b"queued"


async def test_a_lone_caller_does_not_wait_for_the_batch_delay(make_client: ClientFactory) -> None:
    client = await make_client(model="tests.models:BatchEcho", max_batch_delay_ms=60_000)
    for text in ("first", "second"):
        resp = await asyncio.wait_for(client.post("/predict", json={"input": text}), 10)
        assert (await resp.json())["result"] == {"echo": text}


async def test_a_model_that_runs_one_call_at_a_time_gathers_the_next_batch_meanwhile(
    make_client: ClientFactory,
) -> None:
    # Its own knobs beat the replica's settings (64 per batch, 8 threads, 1 ms).
    client = await make_client(
        model="tests.models:OneAtATime", max_batch_size=64, executor_threads=8
    )
    batcher = client.server.app[state.BATCHERS]["default"]
    assert (batcher.max_size, batcher.max_delay, batcher.concurrency) == (16, 0.05, 1)
    first = batcher.run_one("hold")
    await poll(lambda: asyncio.to_thread(models.started.wait, 0.1))
    # Twenty callers arrive, each on its own turn, while the first call runs: none starts
    # a call of its own (eight threads are free); they wait and go as batches of 16 and 4.
    rest = []
    for i in range(20):
        rest.append(batcher.run_one(f"r{i}"))
        await asyncio.sleep(0)
    assert models.batch_sizes == [1]
    models.release()
    outcomes = await asyncio.gather(first, *rest)
    assert [o.payload for o in outcomes[1:]] == [f'"r{i}"'.encode() for i in range(20)]
    assert models.batch_sizes == [1, 16, 4]


async def test_the_models_file_sets_a_models_batching(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    config = tmp_path / "models.toml"
    config.write_text(
        '[models.echo]\nspec = "tests.models:BatchEcho"\n'
        "max_batch_size = 3\nmax_batch_delay_ms = 0\nconcurrency = 2\n"
    )
    client = await make_client(models_file=config)
    batcher = client.server.app[state.BATCHERS]["echo"]
    assert (batcher.max_size, batcher.max_delay, batcher.concurrency) == (3, 0.0, 2)
    info = await (await client.get("/models/echo")).json()
    assert info["batch"] == {"max_batch_size": 3, "max_batch_delay_ms": 0.0, "concurrency": 2}
    outcomes = await asyncio.gather(*(batcher.run_one(f"t{i}") for i in range(7)))
    assert all(o.ok for o in outcomes)
    assert models.batch_sizes == [3, 3]  # and one alone (a batch of one calls predict)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("concurrency = 0", "concurrency must be a whole number >= 1"),
        ('max_batch_size = "8"', "max_batch_size must be a whole number >= 1"),
        ("max_batch_delay_ms = -1", "max_batch_delay_ms must be a number of milliseconds"),
    ],
)
def test_a_bad_batching_knob_stops_startup_naming_it(
    tmp_path: Path, line: str, problem: str
) -> None:
    config = tmp_path / "models.toml"
    config.write_text(f'[models.echo]\nspec = "tests.models:BatchEcho"\n{line}\n')
    with pytest.raises(ModelLoadError, match=problem):
        model_configs(Settings(models_file=config, redis_url="redis://unused:6379/0"))
