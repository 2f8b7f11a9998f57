"""The Python client, against a real server: predict, submit, result, cancel, bulk, errors."""

from __future__ import annotations

import gc
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from service.client import (
    AsyncClient,
    Client,
    ConflictError,
    InvalidInputError,
    JobCanceledError,
    NotFoundError,
    PredictionFailedError,
    PredictionTimeoutError,
)

from .helpers import ClientFactory, running_service

ROOT = Path(__file__).resolve().parent.parent


async def test_the_async_client_covers_the_api(make_client: ClientFactory) -> None:
    server = await make_client(model="tests.models:Fragile")
    async with AsyncClient(str(server.make_url(""))) as client:
        assert await client.predict("four") == {"length": 4}
        job = await client.submit("seven!!")
        assert await job.result(timeout=10) == {"length": 7}
        assert (await job.status())["status"] == "done"
        jobs = await client.submit_many(["a", "bb"])
        assert [await j.result(timeout=10) for j in jobs] == [{"length": 1}, {"length": 2}]
        failing = await client.submit("boom")
        with pytest.raises(PredictionFailedError, match="the model exploded"):
            await failing.result(timeout=10)
        with pytest.raises(PredictionFailedError) as caught:
            await client.predict("boom")
        assert caught.value.status == 500
        with pytest.raises(InvalidInputError) as invalid:
            await client.predict(5)
        assert invalid.value.detail[0]["loc"] == ["input"]
        with pytest.raises(NotFoundError, match="Unknown model 'nope'"):
            await client.predict("x", model="nope")
        with pytest.raises(ConflictError):
            await job.cancel()  # already done
        assert (await client.models())["default"] == "default"


async def test_cancel_and_result_timeout(make_client: ClientFactory) -> None:
    server = await make_client(workers=0, model="tests.models:echo")
    async with AsyncClient(str(server.make_url(""))) as client:
        job = await client.submit(1)
        with pytest.raises(PredictionTimeoutError):
            await job.result(timeout=0.3)
        assert (await job.cancel())["status"] == "canceled"
        with pytest.raises(JobCanceledError):
            await job.result(timeout=5)


def test_the_blocking_client(redis_url: str) -> None:
    with (
        running_service(REDIS_URL=redis_url, MODEL="tests.models:echo") as base,
        Client(base) as client,
    ):
        assert client.predict("hi") == {"echo": "hi"}
        job = client.submit("later", idempotency_key="k-1")
        assert job.result(timeout=10) == {"echo": "later"}
        assert client.submit("later", idempotency_key="k-1").prediction_id == job.prediction_id
        assert [j.result(timeout=10) for j in client.submit_many([1, 2])] == [
            {"echo": 1},
            {"echo": 2},
        ]


def test_the_blocking_client_used_without_with_leaks_no_session(redis_url: str) -> None:
    code = (
        "import gc, sys, warnings\n"
        "warnings.simplefilter('error')\n"
        "from service.client import Client\n"
        "def use():\n"
        "    client = Client(sys.argv[1])\n"
        "    return client.predict('hi')\n"
        "assert use() == {'echo': 'hi'}\n"
        "gc.collect()\n"
        "print('clean')\n"
    )
    with running_service(REDIS_URL=redis_url, MODEL="tests.models:echo") as base:
        run = subprocess.run(
            [sys.executable, "-X", "dev", "-c", code, base],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "clean"
    assert "Unclosed" not in run.stderr and "ResourceWarning" not in run.stderr, run.stderr


async def test_the_async_client_used_without_with_leaks_no_session(
    make_client: ClientFactory,
) -> None:
    server = await make_client(model="tests.models:echo")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client = AsyncClient(str(server.make_url("")))
        assert await client.predict("hi") == {"echo": "hi"}
        del client
        gc.collect()
    assert not [w for w in caught if "Unclosed" in str(w.message)], [str(w.message) for w in caught]
