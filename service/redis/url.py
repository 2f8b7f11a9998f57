"""Which Redis to use, from REDIS_URL alone: one node, a Sentinel-managed primary, or a
Redis Cluster.

    redis://[user:password@]host:port[/db]            one node (also rediss://, unix://)
    redis+sentinel://[user:password@]host:port[,host:port...]/<master name>[/<db>]
    redis+cluster://[user:password@]host:port[,host:port...]   (also rediss+cluster://)

Credentials in a Sentinel URL are the primary's; `?sentinel_password=...` gives the
sentinels' own. A URL that is none of these is refused with a message naming the problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, unquote

Mode = Literal["single", "sentinel", "cluster"]

_SINGLE = ("redis", "rediss", "unix")
_FORMS = (
    "redis://host:port/db, rediss://..., unix:///path, "
    "redis+sentinel://host:port[,host:port...]/master-name[/db], "
    "redis+cluster://host:port[,host:port...] or rediss+cluster://..."
)


class BadRedisUrl(ValueError):
    """REDIS_URL cannot be used; the message says why."""


@dataclass(frozen=True)
class RedisTarget:
    mode: Mode
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    @property
    def redacted(self) -> str:
        """The URL without its password, for logs."""
        scheme, sep, rest = self.url.partition("://")
        if "@" in rest:
            rest = "***@" + rest.split("@", 1)[1]
        return scheme + sep + rest


def parse(url: str) -> RedisTarget:
    """The target of ``url``; BadRedisUrl with the reason otherwise."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise BadRedisUrl(f"REDIS_URL {_shown(url)!r} has no scheme; use one of: {_FORMS}")
    if scheme in _SINGLE:
        return RedisTarget("single", url)
    if scheme not in ("redis+sentinel", "redis+cluster", "rediss+cluster", "rediss+sentinel"):
        raise BadRedisUrl(f"REDIS_URL scheme {scheme!r} is not known; use one of: {_FORMS}")
    rest, _, query = rest.partition("?")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    credentials, at, hosts_and_path = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts, _, path = hosts_and_path.partition("/")
    nodes = tuple(_node(part, url) for part in hosts.split(",") if part.strip())
    if not nodes:
        raise BadRedisUrl(f"REDIS_URL {_shown(url)!r} names no host:port")
    tls = scheme.startswith("rediss")
    parts = [p for p in path.split("/") if p]
    if scheme.endswith("sentinel"):
        if not parts:
            raise BadRedisUrl(
                f"REDIS_URL {_shown(url)!r} names no primary: "
                "redis+sentinel://host:port[,host:port...]/<master name>[/<db>]"
            )
        db = _db(parts[1], url) if len(parts) > 1 else 0
        if len(parts) > 2:
            raise BadRedisUrl(f"REDIS_URL {_shown(url)!r} has a path longer than /<master>/<db>")
        return RedisTarget("sentinel", url, nodes, parts[0], db, tls, username, password, options)
    if parts:
        raise BadRedisUrl(
            f"REDIS_URL {_shown(url)!r}: a Redis Cluster has no databases; drop the path"
        )
    return RedisTarget("cluster", url, nodes, "", 0, tls, username, password, options)


def _node(part: str, url: str) -> tuple[str, int]:
    host, colon, port = part.strip().rpartition(":")
    if not colon or not host:
        raise BadRedisUrl(f"REDIS_URL {_shown(url)!r}: {part!r} is not host:port")
    try:
        number = int(port)
    except ValueError:
        raise BadRedisUrl(f"REDIS_URL {_shown(url)!r}: port {port!r} is not a number") from None
    if not 0 < number < 65536:
        raise BadRedisUrl(f"REDIS_URL {_shown(url)!r}: port {number} is out of range")
    return host.strip("[]"), number


def _db(raw: str, url: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise BadRedisUrl(f"REDIS_URL {_shown(url)!r}: database {raw!r} is not a number") from None


def _shown(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
