"""What a worker reads next from its partition's streams: after a (re)start its own
unacked entries, now and then entries other consumers left idle, else new ones by
priority."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from service.job import Entry, deleted_ids, parse_entries, stream_entries
from service.redis.calls import Scripts
from service.redis.calls.queue import take
from service.redis.keys import Keys, Partitions

log = logging.getLogger(__name__)

#: Entries to run, each list with the keys of the stream it came from.
Batches = list[tuple[Keys, list[Entry]]]


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """A consumer's reads (at most ``batch_size`` entries a read, a blocking read waits
    ``block_ms``, entries idle ``visibility_ms`` in another consumer are reclaimed) and the
    life of the records it ends (``ttl``, RESULT_TTL_SECONDS)."""

    batch_size: int
    block_ms: int
    visibility_ms: int
    ttl: int = 3600


class Reader:
    """The reads of one consumer of one partition (``next()``), and what decides them.

    New entries are read by priority: a batch is filled from the high stream, then the
    normal one, then the low one (take.lua, one round trip), except that one turn in eight
    starts from normal and one from low, so a steady flow of higher-priority jobs slows the
    lower ones without stopping them: each gets at least one batch in eight of every worker
    while it has jobs. When a read comes back short, the next one waits on all three
    streams at once (one blocking XREADGROUP, up to a batch from each).

    With tenants, each has its three streams; within each priority the tenants are read in
    weighted turns (smooth weighted round robin): a tenant of weight w among tenants of
    total weight W comes first in w turns of every W, so while another floods the queue
    its jobs wait for about W/w batches, not for the whole backlog.
    """

    def __init__(
        self,
        redis: Redis,
        scripts: Scripts,
        partitions: Partitions,
        partition: Keys,
        consumer: str,
        reads: ConsumerSettings,
        running: Callable[[Keys, bytes], bool] = lambda keys, entry_id: False,
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._partitions = partitions
        self._partition = partition
        self._version = -1
        self._streams: tuple[Keys, ...] = ()
        self._tenants: list[tuple[Keys, Keys, Keys]] = []
        self._weights: list[int] = []
        self._credit: list[int] = []
        self._refresh()
        self.consumer = consumer
        self._size = self._most = reads.batch_size
        # Entries this consumer runs now (a streaming job runs beside the reads): its own
        # pending ones are read past them, not started twice.
        self._running = running
        self._pending_after: dict[Keys, str] = {}
        self._block_ms = reads.block_ms
        self._visibility_ms = reads.visibility_ms
        self._reclaim_every = reads.visibility_ms / 2000
        self._next_reclaim = 0.0
        self._own_pending_done = False
        self._turn = 0
        self._backlog = True  # until a read comes back short

    def restart(self) -> None:
        """Reads this consumer's own pending entries first again (a batch left pending, or
        the streams recreated)."""
        self._own_pending_done = False
        self._pending_after.clear()

    def _refresh(self) -> None:
        """Follows the tenants (the keys file was reloaded)."""
        self._version = self._partitions.version
        tenants = self._partitions.tenants
        self._tenants = [self._partition.of_tenant(t).priorities for t in tenants]
        self._weights = [max(1, w) for w in tenants.values()]
        self._credit = [0] * len(self._weights)
        self._streams = tuple(k for p in range(3) for t in self._tenants for k in (t[p],))

    async def next(self, most: int = 0) -> Batches:
        """The next entries to run ([] for none), at most ``most`` (a batch when 0): own
        pending ones until there are none (that pass answers []), idle ones of others
        every half visibility timeout, else new ones."""
        self._most = min(most, self._size) if most > 0 else self._size
        if self._version != self._partitions.version:
            self._refresh()
        if not self._own_pending_done:
            for keys in self._streams:
                entries = await self._own_pending(keys)
                if entries:
                    return [(keys, entries)]
            self._own_pending_done = True
            return []
        now = time.monotonic()
        if now >= self._next_reclaim:
            self._next_reclaim = now + self._reclaim_every
            batches = [(keys, await self._reclaim(keys)) for keys in self._streams]
            batches = [(keys, entries) for keys, entries in batches if entries]
            if batches:
                return batches
        batches = await self._fill(self._order()) if self._backlog else []
        if not batches:
            batches = await self._wait()
        self._backlog = sum(len(entries) for _, entries in batches) >= self._most
        return batches

    def _order(self) -> tuple[Keys, ...]:
        """The streams in the order the next batch is filled from (see the class)."""
        self._turn = turn = (self._turn + 1) % 8
        order = (1, 0, 2) if turn == 3 else (2, 1, 0) if turn == 7 else (0, 1, 2)
        tenants = self._tenants
        if len(tenants) == 1:
            return tuple(tenants[0][p] for p in order)
        credit, weights = self._credit, self._weights
        for i, weight in enumerate(weights):
            credit[i] += weight
        first = max(range(len(credit)), key=credit.__getitem__)
        credit[first] -= sum(weights)
        turns = tenants[first:] + tenants[:first]
        return tuple(t[p] for p in order for t in turns)

    async def _fill(self, streams: tuple[Keys, ...]) -> Batches:
        """Up to a batch in all, from the first of ``streams`` on; never blocks."""
        return await self._parse(
            streams, await take(self._scripts, streams, self.consumer, self._most)
        )

    async def _wait(self) -> Batches:
        """Waits up to the block time for any stream; up to a batch from each."""
        streams = self._streams
        reply = await self._redis.xreadgroup(
            streams[0].group,
            self.consumer,
            {k.stream: ">" for k in streams},
            count=self._most,
            block=self._block_ms,
        )
        if not reply:
            return []
        pairs = reply.items() if isinstance(reply, dict) else reply
        found = {name if isinstance(name, bytes) else name.encode(): raw for name, raw in pairs}
        return await self._parse(streams, [found.get(k.stream.encode(), []) for k in streams])

    async def _parse(self, streams: tuple[Keys, ...], raws: list[list[Any]]) -> Batches:
        out = []
        for keys, raw in zip(streams, raws, strict=True):
            if raw:
                await self._ack_deleted(keys, raw)
                entries = parse_entries(raw)
                if entries:
                    out.append((keys, entries))
        return out

    async def _ack_deleted(self, keys: Keys, raw: list[Any]) -> None:
        """Acks entries deleted while pending (a read shows them without fields)."""
        gone = deleted_ids(raw)
        if gone:
            await self._redis.xack(keys.stream, keys.group, *gone)

    async def _own_pending(self, keys: Keys) -> list[Entry]:
        """This consumer's entries of one stream delivered and never acked (a restart),
        but for those it runs now."""
        while True:
            after = self._pending_after.get(keys, "0")
            reply = await self._redis.xreadgroup(
                keys.group, self.consumer, {keys.stream: after}, count=self._most
            )
            raw = stream_entries(reply)
            if not raw:
                return []
            await self._ack_deleted(keys, raw)
            last = raw[-1][0]
            self._pending_after[keys] = last.decode() if isinstance(last, bytes) else last
            entries = [e for e in parse_entries(raw) if not self._running(keys, e.entry_id)]
            if entries:
                return entries

    async def _reclaim(self, keys: Keys) -> list[Entry]:
        """Takes over entries of one stream that other consumers left idle longer than the
        visibility timeout.

        XAUTOCLAIM answers [cursor, entries] on Redis 6.2 and [cursor, entries, deleted ids]
        on 7.x; the cursor is followed until a batch is found or it returns to 0.
        """
        claimed: list[Entry] = []
        cursor: Any = "0-0"
        while len(claimed) < self._most:
            reply = await self._redis.xautoclaim(
                keys.stream,
                keys.group,
                self.consumer,
                self._visibility_ms,
                start_id=cursor,
                count=self._most - len(claimed),
            )
            cursor, raw = reply[0], reply[1]
            await self._ack_deleted(keys, raw)
            claimed.extend(parse_entries(raw))
            if cursor in (b"0-0", "0-0"):
                break
        if claimed:
            log.info("%s reclaimed %d idle entries", self.consumer, len(claimed))
        return claimed
