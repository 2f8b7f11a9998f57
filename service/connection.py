"""Connecting to Redis: a client from a URL, pinged with a bounded retry."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

# Refusals that pass: Redis answers, but cannot take writes (or this key) right now. (The
# marker is looked for in the error's text: redis-py makes some of them classes of their
# own, and drops the error code from their text, but not when a script hit them.)
_OOM = "Redis is out of memory (maxmemory) and refuses new writes"
_PASSING_REFUSALS = (
    ("OOM command not allowed", _OOM),
    ("command not allowed when used memory", _OOM),
    ("READONLY", "Redis refuses writes: it is a read-only replica (after a failover?)"),
    ("read only replica", "Redis refuses writes: it is a read-only replica (after a failover?)"),
    ("NOREPLICAS", "Redis refuses writes: too few replicas are in sync (min-replicas-to-write)"),
    ("MASTERDOWN", "Redis is failing over: its primary is down"),
    ("CLUSTERDOWN", "the Redis cluster is down or a slot is moving"),
    ("TRYAGAIN", "the Redis cluster is moving a slot"),
    ("LOADING", "Redis is loading its data"),
)


def unavailable(exc: BaseException) -> str | None:
    """Why Redis cannot serve right now, when ``exc`` says so (it is unreachable, timed
    out, out of memory, read-only, failing over, loading); None for any other error."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return "Redis is unreachable"
    if isinstance(exc, ResponseError):
        text = str(exc)
        for marker, reason in _PASSING_REFUSALS:
            if marker in text:
                return reason
    return None


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


class _CPacking(AbstractConnection):
    """Packs commands with hiredis' C packer. redis-py's asyncio connection packs them in
    Python, byte string by byte string: for the submit script of a few dozen coalesced
    jobs that was 14% of an async submit's CPU time."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        # A command name of two words ("CLIENT SETNAME") is sent as two arguments.
        if (isinstance(first, str) and " " in first) or (
            isinstance(first, bytes) and b" " in first
        ):
            args = (*first.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:  # memoryview and the like: redis-py's own packer takes them
            return super().pack_command(*args)


class _TcpConnection(_CPacking, Connection):
    pass


class _SslConnection(_CPacking, SSLConnection):
    pass


class _UnixConnection(_CPacking, UnixDomainSocketConnection):
    pass


_C_PACKING: dict[type, type] = {
    Connection: _TcpConnection,
    SSLConnection: _SslConnection,
    UnixDomainSocketConnection: _UnixConnection,
}


async def connect(
    url: str,
    attempts: int = 20,
    delay: float = 0.25,
    block_ms: int = 1000,
    socket_timeout: float = 5.0,
) -> Redis:
    """A client for ``url`` once Redis answers PING; gives up after ``attempts`` tries.

    Socket timeouts make a Redis that hangs (rather than closes) an error, so routes answer
    503 and workers back off instead of waiting forever; reads may block for ``block_ms``.
    """
    client: Redis = Redis.from_url(
        url,
        health_check_interval=30,
        socket_keepalive=True,
        socket_connect_timeout=2,
        socket_timeout=max(socket_timeout, 2 * block_ms / 1000),
        # A pooled connection that Redis closed (it restarted) is retried on a fresh one.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    pool = client.connection_pool
    pool.connection_class = _C_PACKING.get(pool.connection_class, pool.connection_class)
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
