"""The Redis scripts: one `.lua` file each, beside this loader.

Each file opens with what its KEYS and ARGV are and what it returns. Two conventions of
these files, handled here:

- `--! include <file>` is replaced by that file (shared functions such as `start_job`).
- `STATUS`, `SUBMITTED`, `MARKED`, `ENDING` and `REPLAYED` are tables of the words the
  scripts share with Python, written before each script from `service.redis.words`.
- `-- flags: <flags>` asks for Redis 7 script flags (`allow-oom`: the script may run while
  Redis is out of memory). They are given as a `#!lua flags=...` first line when the
  server is Redis 7 or later, and left out for 6.2, which knows no script flags.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from service.redis.words import lua_tables

_FOLDER = Path(__file__).parent
_INCLUDE = re.compile(r"^--! include (\S+)$", re.MULTILINE)
_FLAGS = re.compile(r"^-- flags: (\S+)$", re.MULTILINE)


@cache
def source(name: str) -> str:
    """The text of script ``name`` ("submit"), its includes written out, after the tables of
    the words it shares with Python (`service.redis.words`)."""
    text = (_FOLDER / f"{name}.lua").read_text()
    return lua_tables() + _INCLUDE.sub(lambda m: (_FOLDER / m.group(1)).read_text(), text)


def flags(name: str) -> str:
    """The Redis 7 flags script ``name`` asks for ('' for none)."""
    found = _FLAGS.search(source(name))
    return found.group(1) if found else ""


class _Script(AsyncScript):
    """redis-py's script, but a node that lacks it (new, restarted, failed over) is sent
    the script itself (EVAL, which also caches it there) instead of a SCRIPT LOAD: on a
    cluster that goes to every primary, and one stalled primary would hold up calls to
    all the others."""

    async def __call__(
        self,
        keys: Sequence[Any] | None = None,
        args: Iterable[Any] | None = None,
        client: Any = None,
    ) -> Any:
        from redis.asyncio.client import Pipeline

        if client is not None and isinstance(client, Pipeline):
            return await super().__call__(keys, args, client)
        keys = keys or []
        flat = (*keys, *(args or ()))
        client = client or self.registered_client
        try:
            return await client.evalsha(self.sha, len(keys), *flat)
        except NoScriptError:
            return await client.eval(self.script, len(keys), *flat)


def register(redis: Redis, name: str, version: tuple[int, ...] = (7,)) -> AsyncScript:
    """Script ``name`` registered with ``redis`` (run by EVALSHA, sent whole to a node
    that lacks it), for a server of ``version``."""
    text = source(name)
    wanted = flags(name)
    if wanted and version >= (7,):
        text = f"#!lua flags={wanted}\n{text}"
    return _Script(redis, text)
