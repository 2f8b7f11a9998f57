"""Webhook policy and signature: which URLs a job may be posted to, and how it is signed.

A URL must be http(s) with a host; WEBHOOK_ALLOWED_HOSTS (if set) lists the hosts allowed;
and unless WEBHOOK_ALLOW_PRIVATE, the host must resolve to globally routable addresses
only (SSRF: see `non_public`). The check
runs at submit (a 422 the caller sees) and again at each delivery, and the delivery's own
connections go through `PublicResolver`, so a name that re-resolves to a private address
between the check and the connect is refused too.

Signature: `X-Webhook-Signature: sha256=<hex>`, the HMAC-SHA256 with WEBHOOK_SECRET of
`<X-Webhook-Timestamp>.<raw body>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from service.errors import InvalidInput


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Webhook-Signature value of ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify(
    secret: str, timestamp: str, signature: str, body: bytes, tolerance: float = 300.0
) -> bool:
    """A receiver's check: the signature matches and the timestamp is recent (replays of
    an old delivery fail)."""
    try:
        fresh = abs(time.time() - int(timestamp)) <= tolerance
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def non_public(address: str) -> bool:
    """True for an address a webhook must not reach unless private ones are allowed: any
    address that is not globally routable (private, loopback, link-local, carrier-grade
    NAT 100.64.0.0/10 where a cloud's metadata service may live, reserved, documentation,
    benchmarking, ...), multicast, IPv6 site-local, and an IPv6 address that carries such
    an IPv4 address inside it (IPv4-mapped, 6to4, NAT64)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return non_public(str(embedded))
        if ip.is_site_local:
            return True
    return not ip.is_global or ip.is_multicast


@dataclass(frozen=True, slots=True)
class Policy:
    """Where webhooks may go: ``allowed_hosts`` (WEBHOOK_ALLOWED_HOSTS, comma-separated;
    empty: any public host), and private, loopback and link-local addresses only with
    ``allow_private`` (WEBHOOK_ALLOW_PRIVATE)."""

    allowed_hosts: str = ""
    allow_private: bool = False
    #: The setting that lists the hosts, named in refusals.
    hosts_setting: str = "WEBHOOK_ALLOWED_HOSTS"


async def check_url(
    url: str,
    policy: Policy,
    subject: str = "The webhook URL",
    loc: Sequence[str] = ("webhook",),
) -> None:
    """Raises InvalidInput (422) unless ``url`` may be reached under ``policy`` (a
    webhook's, or input URLs'): ``subject`` and ``loc`` name what is refused."""

    def refused(why: str, kind: type[InvalidInput] = InvalidInput) -> InvalidInput:
        problem = {
            "loc": list(loc),
            "msg": why,
            "type": "webhook_url" if loc == ("webhook",) else "file_url",
        }
        return kind(f"{subject} is not accepted.", [problem])

    try:
        parts = urlsplit(url)  # checks a bracketed IPv6 address, too
    except ValueError as exc:
        raise refused(f"not a valid URL ({exc})") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise refused("only http and https URLs with a host are accepted")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise refused("the port is not a number from 0 to 65535") from None
    listed = policy.allowed_hosts.split(",")
    allowed = {h.strip().strip("[]").lower() for h in listed if h.strip()}  # [::1] or ::1
    if allowed and host not in allowed:
        raise refused(f"host {host!r} is not in {policy.hosts_setting}")
    if policy.allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise refused(f"host {host!r} does not resolve ({exc})", Unresolved) from None
    for info in infos:
        if non_public(str(info[4][0])):
            raise refused(f"{host!r} resolves to a non-public address ({info[4][0]})")


class Unresolved(InvalidInput):
    """The webhook's host name did not resolve: refused at submit, where the caller can
    retry; at delivery it may be a passing DNS fault, so the delivery is retried."""


class PublicResolver(AbstractResolver):
    """The default resolver, refusing names that resolve to any non-public address."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for item in found:
            if non_public(item["host"]):
                raise OSError(f"{host!r} resolves to a non-public address ({item['host']})")
        return found

    async def close(self) -> None:
        await self._inner.close()
