"""The app factory: routes, every resource's lifetime, and how it stops."""

from __future__ import annotations

import asyncio

from aiohttp import web

from service.background import activity_ctx, webhooks_ctx, workers_ctx
from service.errors import ShuttingDown
from service.http import state
from service.http.keys_file import tenants_ctx
from service.http.lifecycle import Lifecycle, SyncGate
from service.http.routes import add_routes
from service.http.tenants import Tenants
from service.jobs.webhooks import Policy
from service.observability.metrics import Metrics
from service.observability.tracing import from_env as tracing_from_env
from service.resources import embedded_redis_ctx, files_ctx, models_ctx, redis_ctx
from service.settings import Settings

#: Sync calls still running this long before the shutdown deadline are answered 503, so
#: that their clients get an answer before the server closes the connections.
_ANSWER_BEFORE_DEADLINE = 0.5


async def _begin_stopping(app: web.Application) -> None:
    """on_shutdown (SIGTERM): readiness answers 503; workers stop reading and drain, and so
    do webhook deliveries; waiters are answered now (202 with the id, or the record as it
    is); sync calls that would outlast the grace period are answered 503 just before it
    ends. Everything shares one deadline, SHUTDOWN_GRACE_SECONDS from now."""
    settings, lifecycle = app[state.SETTINGS], app[state.LIFECYCLE]
    lifecycle.begin_stopping(settings.shutdown_grace_seconds)
    if state.WAITERS in app:
        app[state.WAITERS].release()
    if state.BATCHERS in app:
        batchers = app[state.BATCHERS]
        cut = max(0.0, settings.shutdown_grace_seconds - _ANSWER_BEFORE_DEADLINE)
        asyncio.get_running_loop().call_later(
            cut,
            batchers.abandon,
            ShuttingDown("The replica is shutting down; try again (another replica will answer)."),
        )


def create_app(settings: Settings) -> web.Application:
    """Builds the application; nothing starts until the app is run."""
    # No middlewares: every handler is wrapped where it is registered (http/routes.py).
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[state.SETTINGS] = settings
    app[state.WEBHOOK_POLICY] = Policy(
        settings.webhook_allowed_hosts, settings.webhook_allow_private
    )
    app[state.METRICS] = Metrics()
    app[state.LIFECYCLE] = Lifecycle()
    app[state.SYNC_GATE] = SyncGate()
    app.on_shutdown.append(_begin_stopping)
    app.cleanup_ctx.append(models_ctx)
    if settings.redis_url:
        app[state.REDIS_URL] = settings.redis_url
    else:
        app.cleanup_ctx.append(embedded_redis_ctx)
    app.cleanup_ctx.append(redis_ctx)
    app.cleanup_ctx.append(files_ctx)
    keys = None
    if settings.api_key or settings.api_keys_file:
        keys = app[state.TENANTS] = Tenants(settings.api_key or "", settings.api_keys_file or "")
        app.cleanup_ctx.append(tenants_ctx)
    if settings.dashboard:  # before the workers: its last flush comes after their last jobs
        app.cleanup_ctx.append(activity_ctx)
    app.cleanup_ctx.append(workers_ctx)
    app.cleanup_ctx.append(webhooks_ctx)
    tracing = tracing_from_env()
    if tracing is not None:
        app[state.TRACING] = tracing
    add_routes(
        app,
        keys=keys,
        admin_key=settings.admin_api_key or "",
        tracing=tracing,
        dashboard=settings.dashboard,
    )
    return app
