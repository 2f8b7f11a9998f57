"""Dead letters an operator can act on: list them (with reason and attempts), replay them
(back on the queue with fresh attempts, under the same prediction id), purge them.

A dead letter is an entry of a partition's dead-letter stream (`Keys.dead_letters`, written
by mark.lua when a job was delivered too many times); its record is failed and keeps the
entry's id (`dead_entry`). A replay (replay.lua) deletes the entry and queues the job again
in one step, so a replay repeated, or run by two operators at once, queues a job once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from service.redis.calls import Scripts
from service.redis.calls.records import replay
from service.redis.calls.views import purge_letter
from service.redis.keys import Keys, Partitions

#: Most dead letters one page lists, and one replay or purge call handles at a time (each
#: call is one bounded script or command: Redis serves others in between).
PAGE = 100


def _text(value: bytes | None) -> str:
    return value.decode() if value is not None else ""


class DeadLetters:
    """The dead letters of every partition: listed a page at a time, replayed, purged."""

    def __init__(
        self, redis: Redis, scripts: Scripts, partitions: Partitions, ttl_seconds: int
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._partitions = partitions
        self._ttl = ttl_seconds

    async def count(self) -> int:
        lengths = await asyncio.gather(
            *(self._redis.xlen(keys.dead_letters) for keys in self._partitions.all)
        )
        return sum(lengths)

    async def page(self, after: str, limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` dead letters after the cursor ``after`` ('' for the first page),
        oldest first, partition by partition; and the cursor of the next page (None at the
        end). A cursor is '<partition>-<entry id>'."""
        start_partition, _, start_entry = after.partition("-") if after else ("0", "", "")
        items: list[dict[str, Any]] = []
        for keys in self._partitions.all[int(start_partition) :]:
            low = f"({start_entry}" if keys.index == int(start_partition) and start_entry else "-"
            entries: Any = await self._redis.xrange(keys.dead_letters, low, "+", count=limit)
            items += await self._describe(keys, entries)
            if len(items) >= limit:
                return items[:limit], f"{keys.index}-{items[limit - 1]['entry']}"
            start_entry = ""
        return items, None

    async def _describe(self, keys: Keys, entries: list[Any]) -> list[dict[str, Any]]:
        pipe = self._redis.pipeline(transaction=False)
        for _, fields in entries:
            pipe.hmget(fields[b"key"], "model", "attempts", "request_id", "status")
        records = await pipe.execute() if entries else []
        out = []
        for (entry_id, fields), (model, attempts, request_id, status) in zip(
            entries, records, strict=True
        ):
            out.append(
                {
                    "prediction_id": keys.prediction_id(fields[b"key"]),
                    "entry": entry_id.decode(),
                    "reason": _text(fields.get(b"reason")),
                    "dead_at": float(fields.get(b"at") or 0),
                    "model": _text(model) or None,
                    "attempts": int(attempts) if attempts is not None else None,
                    "request_id": _text(request_id) or None,
                    # None once the record expired: such a letter can only be purged.
                    "status": _text(status) or None,
                }
            )
        return out

    async def replay(self, keys: Keys, letters: list[tuple[str, str]], now: float) -> list[str]:
        """Queues again the jobs of (dead-letter entry id, prediction id) pairs of one
        partition; answers each one's outcome ('replayed', 'no', 'gone', 'stale': see
        replay.lua)."""
        if not letters:
            return []
        # Each job goes back on its own tenant's streams: one script call per tenant.
        owners: list[Any] = [""] * len(letters)
        if self._partitions.tenanted:
            pipe = self._redis.pipeline(transaction=False)
            for _, prediction_id in letters:
                pipe.hget(keys.record(prediction_id), "tenant")
            owners = await pipe.execute()
        by_tenant: dict[str, list[int]] = {}
        for at, owner in enumerate(owners):
            by_tenant.setdefault(owner.decode() if owner else "", []).append(at)
        out = [""] * len(letters)
        for tenant, positions in by_tenant.items():
            owned = [letters[at] for at in positions]
            answers = await replay(self._scripts, keys.of_tenant(tenant), owned, now, self._ttl)
            for at, answer in zip(positions, answers, strict=True):
                out[at] = answer.value
        return out

    async def replay_one(self, prediction_id: str, now: float) -> str | None:
        """Replays one job by its id; None when it has no record."""
        keys = self._partitions.of(prediction_id)
        fields: Any = await self._redis.hmget(keys.record(prediction_id), "status", "dead_entry")
        status, entry = fields
        if status is None:
            return None
        if entry is None:
            return "no"
        (answer,) = await self.replay(keys, [(entry.decode(), prediction_id)], now)
        return answer

    async def _pages(self) -> AsyncIterator[tuple[Keys, list[Any]]]:
        """The oldest PAGE dead letters of each partition, again and again, until the caller
        has removed them all (each page is read after the previous one was handled)."""
        for keys in self._partitions.all:
            while entries := await self._redis.xrange(keys.dead_letters, "-", "+", count=PAGE):
                yield keys, entries

    async def replay_all(self, now: float) -> dict[str, int]:
        """Replays every dead letter, a page at a time; counts the outcomes."""
        counts = {"replayed": 0, "gone": 0, "stale": 0, "no": 0}
        async for keys, entries in self._pages():
            letters = [(e.decode(), keys.prediction_id(f[b"key"])) for e, f in entries]
            for answer in await self.replay(keys, letters, now):
                counts[answer] += 1
        return counts

    async def purge_one(self, prediction_id: str, entry: str = "") -> bool | None:
        """Deletes one job's dead letter (its failed record stays until it expires): the
        one its record names, or ``entry`` (a letter whose record expired); answers
        whether there was one, None when the job has no record and no entry was given."""
        keys = self._partitions.of(prediction_id)
        answer = await purge_letter(
            self._scripts, keys.dead_letters, keys.record(prediction_id), entry
        )
        return None if answer < 0 else answer == 1

    async def purge(self) -> int:
        """Deletes every dead letter (their failed records stay until they expire)."""
        purged = 0
        async for keys, entries in self._pages():
            purged += await self._redis.xdel(keys.dead_letters, *(e for e, _ in entries))
        return purged
