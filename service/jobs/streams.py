"""Every partition's streams and their consumer groups: made at start-up, made again when
one was deleted or lost in a failover, and made for each tenant as it appears. Every
tenant that ever had streams is kept in a set in Redis (`Partitions.registry`), so a
restart reads the streams of a tenant taken out of the keys file too, and its queued jobs
still run and are counted."""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from service.redis.keys import Keys, Partitions

log = logging.getLogger(__name__)


class Streams:
    """The streams and groups of ``partitions``."""

    def __init__(self, redis: Redis, partitions: Partitions) -> None:
        self._redis = redis
        self.partitions = partitions

    async def ensure(self) -> None:
        """Creates every stream and group that is missing, from id 0 so no queued job is
        skipped. Every tenant that ever had streams is read (with weight 1 until the keys
        file names it)."""
        partitions = self.partitions
        known = {_text(name) for name in await self._redis.smembers(partitions.registry)}
        partitions.add_tenants({name: 1 for name in known if name not in partitions.tenants})
        await self._ensure_groups([k for p in partitions.all for k in partitions.streams(p)])

    async def add_tenants(self, weights: dict[str, int]) -> None:
        """Makes the streams and groups of these tenants (if new) and records them, then
        reads them too, with these weights."""
        partitions = self.partitions
        grown = {**partitions.tenants, **weights}
        await self._ensure_groups(
            [k for p in partitions.all for t in grown for k in p.of_tenant(t).priorities]
        )
        if weights:
            await self._redis.sadd(partitions.registry, *weights)
        partitions.add_tenants(weights)

    async def _ensure_groups(self, streams: list[Keys]) -> None:
        for keys in streams:
            try:
                await self._redis.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
                log.info("created consumer group %s on stream %s", keys.group, keys.stream)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
