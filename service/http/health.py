"""Liveness and readiness: is the process up; can this replica do its work right now."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.http import state
from service.http.io import json_response
from service.redis.connection import unavailable
from service.redis.durable import Durable
from service.redis.keys import Keys
from service.settings import Settings

_CHECK_TIMEOUT_SECONDS = 2.0
_PROBE_TTL_MS = 10_000


async def live(request: web.Request) -> web.Response:
    """
    ---
    summary: Liveness (the process answers)
    description: >-
      503 only when the replica is broken beyond what it mends itself (its private
      redis-server cannot be restarted): restart it.
    tags: [health]
    responses:
      "200":
        description: The process is up.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Health"}
      "503":
        description: Broken; `checks.process` says why.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Health"}
    """
    fault = request.app[state.LIFECYCLE].fault
    if fault is not None:
        return json_response({"status": "unavailable", "checks": {"process": fault}}, status=503)
    return json_response({"status": "ok", "checks": {"process": "up"}})


async def _redis_checks(app: web.Application) -> dict[str, str]:
    settings = app[state.SETTINGS]
    redis = app[state.REDIS]
    partitions = app[state.PARTITIONS].all
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_SECONDS):
            await redis.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        return {"redis": f"unreachable: {type(exc).__name__}: {exc}"}
    checks["redis"] = "ok"
    # A write to every partition (every shard of a cluster), as submits and workers make:
    # out of memory, a read-only replica after a failover, too few replicas in sync, a
    # slot being moved all show here.
    refused = await asyncio.gather(*(_write_refused(redis, k, settings) for k in partitions))
    problems = [
        f"partition {k.index}: {why}" if len(partitions) > 1 else why
        for k, why in zip(partitions, refused, strict=True)
        if why
    ]
    checks["writes"] = f"refused: {'; '.join(problems)}" if problems else "ok"
    durable = app.get(state.DURABLE)
    if durable is not None and not problems:
        refused = await asyncio.gather(
            *(_not_durable(durable, k.write_probe(settings.consumer_name)) for k in partitions)
        )
        problems = [
            f"partition {k.index}: {why}" if len(partitions) > 1 else why
            for k, why in zip(partitions, refused, strict=True)
            if why
        ]
        checks["durable_submit"] = f"refused: {'; '.join(problems)}" if problems else "ok"
    missing = await asyncio.gather(*(_group_missing(redis, k) for k in partitions))
    gone = [why for why in missing if why]
    checks["consumer_group"] = "; ".join(gone) if gone else "ok"
    return checks


async def _write_refused(redis: Redis, keys: Keys, settings: Settings) -> str:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_SECONDS):
            await redis.set(keys.write_probe(settings.consumer_name), "1", px=_PROBE_TTL_MS)
    except (RedisError, OSError, TimeoutError) as exc:
        return unavailable(exc) or f"{type(exc).__name__}: {exc}"
    return ""


async def _not_durable(durable: Durable, probe: str) -> str:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_SECONDS):
            return await durable.refused(probe)
    except (RedisError, OSError, TimeoutError) as exc:
        return unavailable(exc) or f"{type(exc).__name__}: {exc}"


async def _group_missing(redis: Redis, keys: Keys) -> str:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_SECONDS):
            groups = await redis.xinfo_groups(keys.stream)
    except (RedisError, OSError, TimeoutError) as exc:
        if "no such key" in str(exc).lower():
            return f"stream {keys.stream!r} is missing"
        return f"unknown: {type(exc).__name__}: {exc}"
    names = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"] for g in groups}
    return "" if keys.group in names else f"group {keys.group!r} is missing"


async def ready(request: web.Request) -> web.Response:
    """
    ---
    summary: >-
      Readiness (Redis reachable and taking writes, consumer group present, models loaded,
      not stopping)
    description: 503 with the reasons when this replica should get no traffic.
    tags: [health]
    responses:
      "200":
        description: Ready.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Health"}
      "503":
        description: Not ready; `checks` says why.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Health"}
    """
    app = request.app
    checks: dict[str, Any] = {}
    if state.MODELS not in app:
        checks["models"] = "not loaded"
    elif not app[state.EXECUTOR].healthy:
        checks["models"] = "the model processes died; they are being restarted"
    else:
        checks["models"] = "ok"
    checks["shutting_down"] = "no" if not app[state.LIFECYCLE].stopping else "yes"
    if state.REDIS in app:
        checks.update(await _redis_checks(app))
    else:
        checks["redis"] = "not connected"
    healthy = all(v in ("ok", "no") for v in checks.values())
    return json_response(
        {"status": "ok" if healthy else "unavailable", "checks": checks},
        status=200 if healthy else 503,
    )
