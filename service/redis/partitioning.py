"""Deciding the queue's partitions at start-up, and keeping every replica to the same ones.

The first replica decides: QUEUE_PARTITIONS, or by default 1 on one node and one per
primary on a Redis Cluster. On a cluster each partition's hash tag is chosen so that the
partitions fall on the primaries in turn (partition i on the i-th primary, i mod their
number), so the work is spread evenly whatever the slot layout. The decision is stored
in Redis (the JSON string `<STREAM>:meta`); every later replica reads it, and a replica
whose QUEUE_PARTITIONS disagrees with it refuses to start (PartitionMismatch).
"""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any

from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import RedisError

from service.redis.connection import unavailable
from service.redis.keys import Names, Partitions

log = logging.getLogger(__name__)


class PartitionMismatch(RuntimeError):
    """QUEUE_PARTITIONS differs from what the stored queue was made with."""


async def open_partitions(redis: Redis, names: Names, wanted: int, cluster: bool) -> Partitions:
    """The partitions of the queue in ``redis``: as stored, or decided now (``wanted``, or
    by default one on one node and one per primary on a cluster) and stored."""
    meta = names.meta
    raw = await redis.get(meta)
    stored: dict[str, Any] = json.loads(raw) if raw else {}
    if not stored:
        count = wanted or (len(_primaries(redis)) if cluster else 1)
        if not cluster and count == 1:
            return Partitions.single(names)  # the plain names of earlier versions
        await _refuse_over_a_plain_queue(redis, names, count)
        chosen = (
            _balanced_tags(redis, names.stream, count)
            if cluster
            else [str(i) for i in range(count)]
        )
        stored = {"partitions": count, "tags": chosen}
        try:
            # The first replica's decision stands: another may have stored one meanwhile.
            if not await redis.set(meta, json.dumps(stored), nx=True):
                stored = json.loads(await redis.get(meta) or "{}") or stored
        except RedisError as exc:
            if unavailable(exc) is None:
                raise
            log.warning("cannot store the partition layout yet (%s)", unavailable(exc))
    count = int(stored["partitions"])
    tags: list[str] | None = stored.get("tags")
    if wanted and wanted != count:
        raise PartitionMismatch(
            f"QUEUE_PARTITIONS={wanted}, but the queue stored in Redis "
            f"was made with {count} partitions (see {meta}). Every replica must use the "
            f"same count: unset QUEUE_PARTITIONS (or set it to {count}), or change it as "
            "the README says (drain the queue, stop every replica, delete the meta key)."
        )
    if count > 1 or tags is not None:
        log.info("queue in %d partitions: %s", count, ", ".join(tags or []))
    return Partitions(names, tags, sharded=cluster)


async def _refuse_over_a_plain_queue(redis: Redis, names: Names, count: int) -> None:
    """A queue made before partitions (the plain stream) holding work is not left behind."""
    try:
        plain = Partitions.single(names)[0].priorities
        waiting = sum([await redis.xlen(keys.stream) for keys in plain])
    except RedisError:
        return
    if waiting:
        raise PartitionMismatch(
            f"QUEUE_PARTITIONS={count}, but the one-partition queue {names.stream!r} "
            f"holds {waiting} entries. Drain it with QUEUE_PARTITIONS=1 first (the README "
            "says how to change the count safely)."
        )


def _primaries(redis: Redis) -> list[Any]:
    """The cluster's primaries, in a stable order."""
    nodes: list[Any] = redis.get_primaries()  # type: ignore[attr-defined]
    return sorted(nodes, key=lambda node: node.name)


def _balanced_tags(redis: Redis, stream: str, count: int) -> list[str]:
    """One hash tag per partition, partition i's slot held by primary i mod primaries."""
    primaries = _primaries(redis)
    owner: dict[int, str] = {}
    slots_cache: dict[int, list[Any]] = redis.nodes_manager.slots_cache  # type: ignore[attr-defined]
    for slot, nodes in slots_cache.items():
        owner[slot] = nodes[0].name
    tags = []
    for index in range(count):
        wanted = primaries[index % len(primaries)].name
        for nonce in itertools.count():
            tag = f"{index}-{nonce}"
            if owner.get(key_slot(("{" + f"{stream}:{tag}" + "}").encode())) == wanted:
                tags.append(tag)
                break
    return tags
