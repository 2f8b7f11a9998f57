"""The Redis scripts: one `.lua` file each, beside this loader.

Each file opens with what its KEYS and ARGV are and what it returns. Two conventions of
these files, handled here:

- `--! include <file>` is replaced by that file (shared functions such as `start_job`).
- `-- flags: <flags>` asks for Redis 7 script flags (`allow-oom`: the script may run while
  Redis is out of memory). They are given as a `#!lua flags=...` first line when the
  server is Redis 7 or later, and left out for 6.2, which knows no script flags.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

_FOLDER = Path(__file__).parent
_INCLUDE = re.compile(r"^--! include (\S+)$", re.MULTILINE)
_FLAGS = re.compile(r"^-- flags: (\S+)$", re.MULTILINE)


@cache
def source(name: str) -> str:
    """The text of script ``name`` ("submit"), its includes written out."""
    text = (_FOLDER / f"{name}.lua").read_text()
    return _INCLUDE.sub(lambda m: (_FOLDER / m.group(1)).read_text(), text)


def flags(name: str) -> str:
    """The Redis 7 flags script ``name`` asks for ('' for none)."""
    found = _FLAGS.search(source(name))
    return found.group(1) if found else ""


def register(redis: Redis, name: str, version: tuple[int, ...] = (7,)) -> AsyncScript:
    """Script ``name`` registered with ``redis`` (run by EVALSHA, loaded on first use),
    for a server of ``version``."""
    text = source(name)
    wanted = flags(name)
    if wanted and version >= (7,):
        text = f"#!lua flags={wanted}\n{text}"
    return redis.register_script(text)
