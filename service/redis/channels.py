"""Following this replica's own channel of every partition, on which the job scripts tell
it what started, what ended and what has new chunks, of the jobs it waits for (and only
those: a job's end goes to the replicas in its record's watchers, not to every replica).

On one node (or a Sentinel-managed primary) one connection subscribes to every channel.
On a Redis Cluster the channels are shard channels (SPUBLISH in the scripts): one
connection per partition, to the primary that holds its slot (SSUBSCRIBE); when the slot
moves or the primary fails over, that connection follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from service.redis.connection import client_for
from service.redis.keys import Keys, Partitions
from service.redis.url import RedisTarget
from service.redis.words import Told

log = logging.getLogger(__name__)

_RECONNECT_SECONDS = 1.0


#: What a message tells of the jobs it names (`Told`), by its first byte.
_TOLD = {ord(t.value): t for t in Told}


class Channels:
    """Calls ``announced(keys, heard, data)`` for each message to this ``replica`` of
    partition ``keys`` (``data``: record keys, comma-separated), and ``missed()`` whenever
    messages may have been missed (a lost connection)."""

    def __init__(
        self,
        target: RedisTarget,
        partitions: Partitions,
        replica: str,
        announced: Callable[[Keys, Told, bytes], None],
        missed: Callable[[], None],
    ) -> None:
        self._target = target
        self._partitions = partitions
        self._announced = announced
        self._missed = missed
        self._channels = {keys.to_replica(replica).encode(): keys for keys in partitions.all}
        # Its own connections: a subscribed connection can do nothing else, and it must
        # not time out while the channels are quiet.
        self._redis: Redis = client_for(target, socket_timeout=None)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if self._partitions.sharded:
            self._tasks = [
                asyncio.create_task(self._listen_to_shard(keys), name=f"channels-{keys.index}")
                for keys in self._partitions.all
            ]
        else:
            self._tasks = [asyncio.create_task(self._listen_to_all(), name="channels")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose()

    async def _listen_to_all(self) -> None:
        channels = [channel.decode() for channel in self._channels]

        async def subscribed() -> tuple[PubSub, Redis | None]:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(*channels)
            return pubsub, None

        await self._follow(subscribed, "message", "this replica's channels")

    async def _listen_to_shard(self, keys: Keys) -> None:
        cluster: Any = self._redis
        target = self._target

        async def subscribed() -> tuple[PubSub, Redis | None]:
            await cluster.initialize()  # the slot map, once (and again after a failure)
            node = cluster.get_node_from_key(keys.to_replica(""))
            primary = Redis(
                host=node.host,
                port=node.port,
                username=target.username,
                password=target.password,
                ssl=target.tls,
                socket_timeout=None,
                socket_connect_timeout=2,
                health_check_interval=30,
            )
            pubsub = primary.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.ssubscribe(*(c for c, k in self._channels.items() if k is keys))
            except BaseException:
                await pubsub.aclose()
                await primary.aclose()
                raise
            return pubsub, primary

        await self._follow(subscribed, "smessage", f"partition {keys.index}'s channels")

    async def _follow(
        self,
        subscribed: Callable[[], Awaitable[tuple[PubSub, Redis | None]]],
        kind: str,
        what: str,
    ) -> None:
        """Subscribes, wakes waiters for what is announced, and subscribes again after a
        lost connection (or, on a cluster, a slot that moved: its channels are dropped
        with an unsubscribe message). Waiters are woken whenever announcements may have
        been missed."""
        outage = False
        while True:
            pubsub: PubSub | None = None
            node: Redis | None = None  # a client of its own (one shard's primary), if any
            try:
                pubsub, node = await subscribed()
                if outage:
                    log.info("%s followed again", what)
                    self._missed()
                outage = False
                async for message in pubsub.listen():
                    if message["type"] == kind:
                        data = message["data"]
                        heard = _TOLD.get(data[0]) if data else None
                        if heard is not None:
                            keys = self._channels[message["channel"]]
                            self._announced(keys, heard, data[1:])
                    elif message["type"] in ("sunsubscribe", "unsubscribe"):
                        raise RedisConnectionError("the channels moved to another node")
            except (RedisError, RedisClusterException, OSError) as exc:
                if not outage:
                    log.warning("%s lost (%s); subscribing again", what, exc)
                outage = True
                self._missed()
                if self._partitions.sharded:
                    with contextlib.suppress(RedisError, RedisClusterException, OSError):
                        await self._redis.nodes_manager.initialize()  # type: ignore[attr-defined]
                await asyncio.sleep(_RECONNECT_SECONDS)
            except Exception:  # a bug must not end the following for good
                log.exception("following %s failed; trying again", what)
                outage = True
                self._missed()
                await asyncio.sleep(_RECONNECT_SECONDS)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    if pubsub is not None:
                        await pubsub.aclose()
                    if node is not None:
                        await node.aclose()
