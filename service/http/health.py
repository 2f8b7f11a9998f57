"""Liveness and readiness: is the process up; can this replica do its work right now."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from .. import state
from ..connection import unavailable
from ..keys import Keys
from .io import json_response

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
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_SECONDS):
            await redis.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        return {"redis": f"unreachable: {type(exc).__name__}: {exc}"}
    checks["redis"] = "ok"
    try:
        # A write, as submits and workers make: out of memory, a read-only replica after a
        # failover, too few replicas in sync all show here.
        async with asyncio.timeout(_CHECK_TIMEOUT_SECONDS):
            probe = Keys.from_settings(settings).write_probe(settings.consumer_name)
            await redis.set(probe, "1", px=_PROBE_TTL_MS)
        checks["writes"] = "ok"
    except (RedisError, OSError, TimeoutError) as exc:
        checks["writes"] = f"refused: {unavailable(exc) or f'{type(exc).__name__}: {exc}'}"
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_SECONDS):
            groups = await redis.xinfo_groups(settings.stream)
    except (RedisError, OSError, TimeoutError) as exc:
        if "no such key" in str(exc).lower():
            checks["consumer_group"] = f"stream {settings.stream!r} is missing"
        else:
            checks["consumer_group"] = f"unknown: {type(exc).__name__}: {exc}"
        return checks
    names = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"] for g in groups}
    group = "ok" if settings.group in names else f"group {settings.group!r} is missing"
    checks["consumer_group"] = group
    return checks


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
        checks["models"] = "a model process died; the process pool is being restarted"
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
