"""A real redis-server for the session, a clean database per test, and app builders."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from service.app import create_app
from service.embedded import RedisServer, free_port
from service.settings import Settings

from . import models as test_models

ClientFactory = Callable[..., Awaitable[TestClient]]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session, found the same way the service finds it."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, its database emptied for this test."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
async def rds(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client for looking at what the service wrote."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(autouse=True)
def _reset_test_models() -> Iterator[None]:
    test_models.reset()
    yield
    test_models.release()


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a test app: fast polling, one worker, overridable per test."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "workers": 1,
            "read_block_ms": 50,
            "shutdown_grace_seconds": 2,
            "data_dir": tmp_path,
            "consumer_name": "test",
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def make_client(aiohttp_client: Any, settings: Callable[..., Settings]) -> ClientFactory:
    async def make(**overrides: Any) -> TestClient:
        return await aiohttp_client(create_app(settings(**overrides)))  # type: ignore[no-any-return]

    return make


Served = tuple[web.Application, str]


@pytest.fixture
async def make_served(settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., Any]]:
    """Apps served as `python -m service` serves them (a handler is not cancelled when its
    client leaves; aiohttp's test server cancels it): answers (app, base URL)."""
    runners: list[web.AppRunner] = []

    async def make(**overrides: Any) -> Served:
        app = create_app(settings(**overrides))
        runner = web.AppRunner(app, handler_cancellation=False, access_log=None)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return app, f"http://127.0.0.1:{port}"

    yield make
    for runner in reversed(runners):
        await runner.cleanup()


async def poll(
    check: Callable[[], Awaitable[Any]], within: float = 10.0, interval: float = 0.02
) -> Any:
    """Calls ``check`` until it returns something truthy; fails after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s (last value: {value!r})")
        await asyncio.sleep(interval)


@contextmanager
def running_service(**env: str) -> Iterator[str]:
    """`python -m service` as users run it, in a subprocess on a free port, with ``env``
    added to this environment; yields its base URL once it answers; on exit, SIGTERM and
    a clean exit (code 0) within 30 s.
    """
    port = free_port()
    full = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "WARNING", **env}
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=full)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + "/health/live", timeout=2).close()
                break
            except (urllib.error.URLError, OSError):
                assert proc.poll() is None, "the service exited at start-up"
                assert time.monotonic() < deadline, "the service never answered"
                time.sleep(0.05)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, f"exit code {code} after SIGTERM"
