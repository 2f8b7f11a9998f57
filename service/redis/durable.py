"""Durable submits (DURABLE_SUBMIT): a 202 only once the job reached a replica of Redis.

Redis acknowledges a write as soon as the primary has it, and copies it to its replicas
a moment later: a primary that fails over in between takes the write with it. WAIT, sent
on the connection that wrote, blocks until that many replicas have everything the
connection wrote (or the timeout passes). So the submit script and WAIT go out together,
on one connection: one round trip more only in the replica's acknowledgement.

On a Redis Cluster the connection must be the one to the primary that holds the
partition's slot: a client of that primary is kept per node.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from service.errors import Overloaded
from service.redis.url import RedisTarget

log = logging.getLogger(__name__)

#: How long a submit waits for a replica to confirm it.
WAIT_MS = 1000


class Durable:
    """Runs a script and confirms its writes reached ``replicas`` replicas."""

    def __init__(self, redis: Redis, target: RedisTarget, replicas: int = 1) -> None:
        self._redis = redis
        self._target = target
        self._replicas = replicas
        self._nodes: dict[str, Redis] = {}

    async def call(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
        client = self._redis if self._target.mode != "cluster" else self._node_for(keys[0])
        try:
            return await self._confirmed(client, script, keys, args)
        except ResponseError as exc:
            if "MOVED" not in str(exc) or self._target.mode != "cluster":
                raise
            # The slot moved (a failover, a reshard): ask the cluster again, once.
            await self._redis.nodes_manager.initialize()  # type: ignore[attr-defined]
            return await self._confirmed(self._node_for(keys[0]), script, keys, args)

    async def _confirmed(
        self, client: Redis, script: AsyncScript, keys: list[Any], args: list[Any]
    ) -> Any:
        async with client.pipeline(transaction=False) as pipe:
            await script(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", self._replicas, WAIT_MS)
            reply, confirmed = await pipe.execute()
        if int(confirmed) < self._replicas:
            raise Overloaded(
                "Redis did not confirm the job on a replica in time (DURABLE_SUBMIT); try "
                "again (with the same Idempotency-Key, if you sent one)."
            )
        return reply

    async def refused(self, key: str) -> str:
        """Why a submit to the partition of ``key`` would be refused now ('' when a replica
        confirms a write there in time): readiness' check (it writes ``key``, a probe)."""
        client = self._redis if self._target.mode != "cluster" else self._node_for(key)
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(key, "1", px=10_000)
            pipe.execute_command("WAIT", self._replicas, WAIT_MS)
            _, confirmed = await pipe.execute()
        if int(confirmed) >= self._replicas:
            return ""
        return (
            f"no replica confirmed a write within {WAIT_MS} ms: DURABLE_SUBMIT refuses "
            "every submit until one does"
        )

    def _node_for(self, key: str) -> Redis:
        node = self._redis.get_node_from_key(key)  # type: ignore[attr-defined]
        client = self._nodes.get(node.name)
        if client is None:
            target = self._target
            client = self._nodes[node.name] = Redis(
                host=node.host,
                port=node.port,
                username=target.username,
                password=target.password,
                ssl=target.tls,
                socket_timeout=5,
                socket_connect_timeout=2,
            )
        return client

    async def aclose(self) -> None:
        for client in self._nodes.values():
            await client.aclose()
