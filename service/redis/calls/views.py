"""The calls of the dashboard's reads: peek.lua (what the streams hold, without inputs)
and purge_letter.lua (one dead letter deleted)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.redis.calls import Scripts, text


@dataclass(frozen=True, slots=True)
class Listed:
    """A job as a stream entry shows it."""

    entry_id: str
    prediction_id: str
    model: str


@dataclass(frozen=True, slots=True)
class Peeked:
    """One stream: its entries, those delivered and not acked (running), the id of the
    oldest not yet delivered (queued; None: none), and the oldest of each kind listed."""

    length: int
    pending: int
    oldest_queued: str | None
    running: list[Listed]
    queued: list[Listed]


def _listed(raw: Any) -> list[Listed]:
    return [Listed(text(entry), text(job), text(model)) for entry, job, model in raw]


async def peek(scripts: Scripts, streams: Sequence[str], group: str, most: int) -> list[Peeked]:
    """What each of ``streams`` (one partition's) holds; with ``most``, up to that many of
    its running and of its queued jobs, oldest first, listed. One call."""
    reply = await scripts.run("peek", list(streams), [group, most])
    return [
        Peeked(
            int(length),
            int(pending),
            text(oldest) if oldest else None,
            _listed(running),
            _listed(queued),
        )
        for length, pending, oldest, running, queued in reply
    ]


async def purge_letter(scripts: Scripts, dead_letters: str, record: str, entry: str) -> int:
    """Deletes a job's dead letter (``entry``, or the one its record names when ''):
    1 deleted, 0 none there, -1 no record and no entry given. One call."""
    return int(await scripts.run("purge_letter", [dead_letters, record], [entry]))
