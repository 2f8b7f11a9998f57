"""One typed call per Redis script: each builds its script's KEYS and ARGV from named
arguments, in the order the script's header gives, and decodes the reply into a named
result. No caller counts offsets in KEYS or ARGV, or reads a reply word as a string.

`Scripts` registers every script once per client; the calls take it as their first
argument. `queue` holds the calls of the streams (submit, take, hand back, retire, the
rate limit), `records` those of the records (mark, finish, cancel, read, keep a sync
record, replay a dead letter), `outputs` those of streaming jobs' chunks, `webhooks`
those of the deliveries, `views` the dashboard's (what the streams hold, one dead
letter purged).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from service.redis.lua import register

#: Every script run on its own (the includes, start_job, no_backlog and tell, are parts of them).
NAMES = (
    "submit",
    "take",
    "hand_back",
    "retire",
    "limit",
    "mark",
    "finish",
    "cancel",
    "read",
    "keep_sync",
    "replay",
    "release_due",
    "settle_delivery",
    "append",
    "peek",
    "purge_letter",
)

#: How a call is sent: the script, KEYS, ARGV -> the reply (a durable submit adds a WAIT).
Runner = Callable[[AsyncScript, list[Any], list[Any]], Awaitable[Any]]


class Scripts:
    """Every script, registered once with ``redis``, a client of a server of ``version``."""

    def __init__(self, redis: Redis, version: tuple[int, ...] = (7,)) -> None:
        self.version = version
        self._scripts = {name: register(redis, name, version) for name in NAMES}

    def __getitem__(self, name: str) -> AsyncScript:
        return self._scripts[name]

    async def run(
        self, name: str, keys: Sequence[Any], args: Sequence[Any], via: Runner | None = None
    ) -> Any:
        """Runs script ``name`` (through ``via`` when given)."""
        script = self._scripts[name]
        if via is not None:
            return await via(script, list(keys), list(args))
        return await script(keys=keys, args=args)


def text(value: Any) -> str:
    """A reply's bytes as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
