"""Fixtures: a real redis-server for the session, a clean database per test, and app
builders. Shared helper functions are in helpers.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
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
from .helpers import ClientFactory


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
