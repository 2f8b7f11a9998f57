"""Connecting to Redis: a client from a URL, pinged with a bounded retry."""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


async def connect(url: str, attempts: int = 20, delay: float = 0.25, block_ms: int = 1000) -> Redis:
    """A client for ``url`` once Redis answers PING; gives up after ``attempts`` tries.

    Socket timeouts make a Redis that hangs (rather than closes) an error, so routes answer
    503 and workers back off instead of waiting forever; reads may block for ``block_ms``.
    """
    client: Redis = Redis.from_url(
        url,
        health_check_interval=30,
        socket_keepalive=True,
        socket_connect_timeout=2,
        socket_timeout=max(5.0, 2 * block_ms / 1000),
        # A pooled connection that Redis closed (it restarted) is retried on a fresh one.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    for attempt in range(1, attempts + 1):
        try:
            await client.ping()
            log.info("connected to Redis at %s", _redact(url))
            return client
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            if attempt == attempts:
                await client.aclose()
                raise RuntimeError(f"Redis at {_redact(url)} did not answer: {exc}") from exc
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
