"""Connecting to Redis (one node, Sentinel or Cluster, as REDIS_URL says): a client pinged
with a bounded retry, and the names of Redis refusals that pass."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    ClusterDownError,
    MaxConnectionsError,
    MovedError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.redis.url import RedisTarget

log = logging.getLogger(__name__)

#: What a Redis call may raise when Redis (or the network to it) fails: a cluster client
#: raises some errors that are not RedisError (a slot no node serves, mid-failover).
REDIS_FAILURES = (RedisError, RedisClusterException, OSError)

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
    if isinstance(exc, SlotNotCoveredError | ClusterDownError | MovedError):
        return "the Redis cluster is failing over or moving a slot"
    if isinstance(exc, ResponseError):
        text = str(exc)
        for marker, reason in _PASSING_REFUSALS:
            if marker in text:
                return reason
    return None


def stream_gone(exc: BaseException) -> bool:
    """Whether ``exc`` says a stream or its consumer group no longer exists: NOGROUP, or
    (Redis 7) UNBLOCKED, the answer of a blocked read whose stream was deleted meanwhile."""
    text = str(exc)
    return "NOGROUP" in text or text.startswith("UNBLOCKED")


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


#: Connections a pool opens to one Redis node at most; past them a command waits for one.
POOL_SIZE = 256
#: How long a command waits for a connection of a full pool before it fails (a Redis
#: that slow is answered 503 like one that is away).
POOL_WAIT_SECONDS = 5.0


class _Waits:
    """A connection pool that, all of its connections in use, makes a command wait for one
    to come back (up to POOL_WAIT_SECONDS) instead of failing at once with "Too many
    connections": a burst of requests (many stream followers woken at once) queues for
    Redis rather than answering 503. Free connections cost no wait."""

    _room: asyncio.Event | None = None

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        ends = 0.0
        while True:
            try:
                return await super().get_connection(*args, **kwargs)  # type: ignore[misc]
            except MaxConnectionsError:
                now = asyncio.get_running_loop().time()
                ends = ends or now + POOL_WAIT_SECONDS
                if now >= ends:
                    raise
                self._room = room = self._room or asyncio.Event()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(room.wait(), ends - now)

    async def release(self, connection: Any) -> None:
        await super().release(connection)  # type: ignore[misc]
        room, self._room = self._room, None
        if room is not None:
            room.set()


class _Pool(_Waits, ConnectionPool):
    pass


class _SentinelPool(_Waits, SentinelConnectionPool):
    pass


_C_PACKING: dict[type, type] = {
    Connection: _TcpConnection,
    SSLConnection: _SslConnection,
    UnixDomainSocketConnection: _UnixConnection,
}


def client_for(
    target: RedisTarget, *, socket_timeout: float | None, health_check_interval: int = 30
) -> Redis:
    """A client of ``target`` (not yet connected). A cluster client is typed as Redis: it
    has every command the service uses, routed by key."""
    retries: dict[str, Any] = {
        # A pooled connection that Redis closed (it restarted) is retried on a fresh one.
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    common: dict[str, Any] = {
        "socket_keepalive": True,
        "socket_connect_timeout": 2,
        "socket_timeout": socket_timeout,
        "health_check_interval": health_check_interval,
    }
    if target.mode == "single":
        pool = _Pool.from_url(target.url, max_connections=POOL_SIZE, **common, **retries)
        pool.connection_class = _C_PACKING.get(pool.connection_class, pool.connection_class)
        return Redis.from_pool(pool)
    auth: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.mode == "sentinel":
        sentinel = Sentinel(
            list(target.nodes),
            sentinel_kwargs={
                "socket_timeout": 2,
                "socket_connect_timeout": 2,
                "password": target.options.get("sentinel_password"),
            },
        )
        # The primary Sentinel names now; after a failover the pool asks again, and a
        # connection to a demoted primary (READONLY) is dropped for one to the new one.
        primary: Redis = sentinel.master_for(
            target.master,
            connection_pool_class=_SentinelPool,
            max_connections=POOL_SIZE,
            db=target.db,
            ssl=target.tls,
            **auth,
            **common,
            **retries,
        )
        return primary
    cluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        ssl=target.tls,
        # Each shard is read from its primary (the default): a replica may lag behind.
        require_full_coverage=False,
        **auth,
        **common,
    )
    return cast(Redis, cluster)


async def close(client: Redis) -> None:
    """Closes a client of `client_for`, and on Sentinel the clients it asked the sentinels
    for the primary with."""
    await client.aclose()
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in manager.sentinels if manager is not None else ():
        await sentinel.aclose()


async def connect(
    target: RedisTarget,
    attempts: int = 20,
    delay: float = 0.25,
    block_ms: int = 1000,
    socket_timeout: float = 5.0,
) -> Redis:
    """A client for ``target`` once Redis answers PING; gives up after ``attempts`` tries.

    Socket timeouts make a Redis that hangs (rather than closes) an error, so routes answer
    503 and workers back off instead of waiting forever; reads may block for ``block_ms``.
    """
    client = client_for(target, socket_timeout=max(socket_timeout, 2 * block_ms / 1000))
    for attempt in range(1, attempts + 1):
        try:
            await client.ping()
            log.info("connected to Redis at %s (%s)", target.redacted, target.mode)
            return client
        except (RedisError, OSError) as exc:
            if unavailable(exc) is None and not isinstance(exc, RedisClusterException):
                await client.aclose()
                raise
            if attempt == attempts:
                await client.aclose()
                raise RuntimeError(f"Redis at {target.redacted} did not answer: {exc}") from exc
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def server_version(redis: Redis) -> tuple[int, ...]:
    """The (major, minor) version of the Redis server (of every node, for a cluster: the
    lowest)."""
    info: Any = await redis.info("server")
    if isinstance(info, dict) and "redis_version" not in info:  # a cluster: one per node
        versions = [node_info["redis_version"] for node_info in info.values()]
    else:
        versions = [info["redis_version"]]
    return min(tuple(int(part) for part in str(v).split(".")[:2]) for v in versions)
