"""Tenants: who may call (API_KEY, or the tenants of API_KEYS_FILE), each one's limits, and
the check every request passes (`service.http.answers`).

The keys file is TOML; keys are stored as SHA-256 digests, never in clear::

    [tenants.acme]
    keys = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
    rate = 50          # requests per second (0 or absent: no limit)
    burst = 100        # requests at once above the rate (default: the rate, at least 1)
    max_queued = 5000  # jobs queued or running (0 or absent: MAX_QUEUE)
    weight = 2         # its share of the workers' turns while others have work too

A request's bearer key is hashed, and its digest compared with every listed digest in
constant time (hmac.compare_digest, no early exit): the time taken says nothing about
which key, or how much of one, matched. The single API_KEY is the default tenant, with no limits.
The file is read again on SIGHUP and whenever its modification time changes (polled); a
file that does not parse is logged and the tenants stay as they were.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import re
import tomllib
from dataclasses import dataclass

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.errors import RateLimited, Unauthorized
from service.redis.calls import Scripts
from service.redis.calls.queue import limit
from service.redis.keys import Names

log = logging.getLogger(__name__)

#: A keys file larger than this is refused (it is read whole, off the event loop).
MAX_FILE_BYTES = 1 << 20
_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"
_DIGEST = r"^[0-9a-f]{64}$"


@dataclass(frozen=True, slots=True)
class Tenant:
    #: "" for the default tenant (API_KEY, or no key at all).
    name: str
    rate: float = 0.0
    burst: int = 1
    max_queued: int = 0
    weight: int = 1


DEFAULT = Tenant("")


#: The bounds of a tenant's limits: a rate is 0 (none) or at least one request in 1,000 s.
MIN_RATE, MAX_RATE = 0.001, 1_000_000.0
MAX_BURST = 1_000_000
MAX_QUEUED = 1_000_000_000


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[str] = Field(min_length=1)
    rate: float = Field(0.0, ge=0, le=MAX_RATE, allow_inf_nan=False)
    burst: int | None = Field(None, ge=1, le=MAX_BURST)
    max_queued: int = Field(0, ge=0, le=MAX_QUEUED)
    weight: int = Field(1, ge=1, le=1000)

    @field_validator("rate")
    @classmethod
    def _rate_or_none(cls, rate: float) -> float:
        if 0 < rate < MIN_RATE:
            raise ValueError(f"a rate is 0 (no limit) or at least {MIN_RATE:g} requests per second")
        return rate


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: dict[str, _Entry] = Field(default_factory=dict)


class KeysFileError(ValueError):
    """The keys file cannot be used; the message says why."""


def parse_keys_file(text: str) -> dict[bytes, Tenant]:
    """The tenants of a keys file, by key digest."""
    try:
        parsed = _File.model_validate(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise KeysFileError(str(exc)) from None
    out: dict[bytes, Tenant] = {}
    for name, entry in parsed.tenants.items():
        if not re.match(_NAME, name) or name == "default":
            raise KeysFileError(
                f"tenant name {name!r}: use 1-32 of a-z, 0-9, '_' and '-', starting with a "
                "letter or digit ('default' is the name of API_KEY's tenant)"
            )
        burst = entry.burst if entry.burst is not None else max(1, math.ceil(entry.rate))
        tenant = Tenant(name, entry.rate, burst, entry.max_queued, entry.weight)
        for key in entry.keys:
            digest = key.lower().removeprefix("sha256:")
            if not re.match(_DIGEST, digest):
                raise KeysFileError(
                    f"tenant {name!r}: a key must be the hex SHA-256 digest of the key (64 "
                    'hex digits; e.g. printf %s "$KEY" | sha256sum), never the key itself'
                )
            raw = bytes.fromhex(digest)
            if raw in out:
                raise KeysFileError(f"tenant {name!r}: a key digest is listed twice")
            out[raw] = tenant
    return out


def read_keys_file(path: str) -> dict[bytes, Tenant]:
    """Reads and parses the keys file (blocking: call it off the event loop)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise KeysFileError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise KeysFileError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise KeysFileError(f"{path} is not UTF-8") from None
    return parse_keys_file(text)


class Tenants:
    """Every key that may call, and its tenant; ``check`` is each request's key check."""

    def __init__(self, api_key: str = "", keys_file: str = "") -> None:
        self._api_key = hashlib.sha256(api_key.encode()).digest() if api_key else b""
        self.keys_file = keys_file
        #: (key digest, its tenant) for every key that may call.
        self._keys: list[tuple[bytes, Tenant]] = []
        self.version = 0  # raised at every change: the queue then follows (add_tenants)
        self._mtime = os.stat(keys_file).st_mtime if keys_file else 0.0
        self._install(read_keys_file(keys_file) if keys_file else {})

    def _install(self, by_digest: dict[bytes, Tenant]) -> None:
        if self._api_key:
            by_digest = {**by_digest, self._api_key: DEFAULT}
        keys = list(by_digest.items())
        if keys != self._keys:
            self._keys = keys
            self.version += 1

    @property
    def named(self) -> list[Tenant]:
        """The tenants of the keys file, each once."""
        return list({t.name: t for _, t in self._keys if t.name}.values())

    def check(self, request: web.Request) -> Tenant:
        """The tenant of the request's bearer key; Unauthorized for a missing or unknown
        key."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        found = None
        if scheme.lower() == "bearer" and token:
            digest = hashlib.sha256(token.encode()).digest()
            for known, tenant in self._keys:  # every one, whichever matches
                if hmac.compare_digest(known, digest):
                    found = tenant
        if found is None:
            raise Unauthorized("Send the API key as 'Authorization: Bearer <key>'.")
        return found

    async def reload(self, force: bool = False) -> bool:
        """Reads the keys file again if it changed (or with ``force``); answers whether
        the tenants changed. A file that does not parse is logged; nothing changes."""
        if not self.keys_file:
            return False
        try:
            mtime = (await asyncio.to_thread(os.stat, self.keys_file)).st_mtime
        except OSError as exc:
            log.error("keys file %s: %s; the tenants stay as they were", self.keys_file, exc)
            return False
        if mtime == self._mtime and not force:
            return False
        try:
            by_digest = await asyncio.to_thread(read_keys_file, self.keys_file)
        except KeysFileError as exc:
            log.error("keys file not reloaded (%s); the tenants stay as they were", exc)
            return False
        self._mtime = mtime
        before = self.version
        self._install(by_digest)
        if self.version != before:
            log.info("keys file reloaded: %d tenants", len(self.named))
        return self.version != before


class Limiter:
    """Each tenant's request rate, held in Redis (one round trip, the same figures on every
    replica): a token bucket of ``burst`` requests refilled at ``rate`` per second."""

    def __init__(self, scripts: Scripts, names: Names) -> None:
        self._scripts = scripts
        self._names = names

    async def admit(self, tenant: Tenant) -> None:
        """Counts one request of ``tenant``; RateLimited (429) when its bucket is empty."""
        bucket = self._names.rate_bucket(tenant.name)
        wait_ms = await limit(self._scripts, bucket, tenant.rate, tenant.burst)
        if wait_ms > 0:
            raise RateLimited(
                f"Tenant {tenant.name!r} may send {tenant.rate:g} requests per second "
                f"(bursts of {tenant.burst}); try again shortly.",
                retry_after=max(1, math.ceil(wait_ms / 1000)),
            )
