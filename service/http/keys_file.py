"""Following the keys file (API_KEYS_FILE): its tenants' streams, weights and quotas given
to the queue at start, and again whenever it changes (SIGHUP, or a new modification time
seen by the poll)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from aiohttp import web

from service.http import state
from service.http.tenants import Limiter
from service.redis.connection import REDIS_FAILURES

log = logging.getLogger(__name__)


async def tenants_ctx(app: web.Application) -> AsyncIterator[None]:
    """Gives the queue the keys file's tenants (their streams, weights and quotas), the
    rate limiter, and reloads the file on SIGHUP and when it changes."""
    settings = app[state.SETTINGS]
    tenants = app[state.TENANTS]
    if not tenants.keys_file:
        yield
        return
    app[state.LIMITER] = Limiter(app[state.SCRIPTS], app[state.PARTITIONS].names)
    applied = {"version": -1}

    async def apply() -> None:
        if applied["version"] == tenants.version:
            return
        named = tenants.named
        await app[state.QUEUE].add_tenants(
            {t.name: t.weight for t in named}, {t.name: t.max_queued for t in named}
        )
        applied["version"] = tenants.version

    with contextlib.suppress(*REDIS_FAILURES):
        await apply()
    wake = asyncio.Event()

    async def follow() -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), settings.api_keys_poll_seconds)
            forced = wake.is_set()
            wake.clear()
            await tenants.reload(force=forced)
            try:
                await apply()
            except REDIS_FAILURES as exc:
                log.warning("tenants' streams not made yet (%s); trying again", exc)

    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, wake.set)
    task = asyncio.create_task(follow(), name="keys-file")
    yield
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.remove_signal_handler(signal.SIGHUP)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
