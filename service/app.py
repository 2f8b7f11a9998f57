"""The app factory: routes, the error middleware, OpenAPI docs and every resource's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from aiohttp_swagger3 import SwaggerDocs, SwaggerInfo, SwaggerUiSettings

from . import __version__, state
from .connection import connect
from .embedded import RedisServer
from .executor import Executor
from .keys import Keys
from .middlewares import error_middleware
from .models import load_model
from .queue import JobQueue
from .results import ResultStore
from .routes import get_prediction, predict
from .settings import Settings
from .worker import Worker

log = logging.getLogger(__name__)

_COMPONENTS = Path(__file__).parent / "openapi" / "components.yaml"


async def embedded_redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """Starts a private redis-server when no REDIS_URL is set, and stops it on exit."""
    settings = app[state.SETTINGS]
    server = RedisServer(settings.data_dir, settings.embedded_redis_port)
    app[state.REDIS_URL] = await asyncio.to_thread(server.start)
    yield
    await asyncio.to_thread(server.stop)


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[state.SETTINGS]
    redis = await connect(app[state.REDIS_URL])
    keys = Keys.from_settings(settings)
    results = ResultStore(redis, keys, settings.result_ttl_seconds)
    queue = JobQueue(redis, keys, results)
    await queue.ensure_group()
    app[state.REDIS] = redis
    app[state.RESULTS] = results
    app[state.QUEUE] = queue
    yield
    await redis.aclose()


async def model_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[state.SETTINGS]
    executor = Executor(settings.executor_threads)
    # Loading may read files or build large objects: keep it off the loop too.
    app[state.MODEL] = await executor.run(load_model, settings.model)
    app[state.EXECUTOR] = executor
    yield
    executor.shutdown()


async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
    """Starts WORKERS consumer tasks; on exit: stop reading, a grace period, then cancel."""
    settings = app[state.SETTINGS]
    workers = [
        Worker(
            redis=app[state.REDIS],
            queue=app[state.QUEUE],
            results=app[state.RESULTS],
            model=app[state.MODEL],
            executor=app[state.EXECUTOR],
            consumer=f"{settings.consumer_name}-{i}",
            batch_size=settings.max_batch_size,
            block_ms=settings.read_block_ms,
            visibility_timeout=settings.visibility_timeout_seconds,
        )
        for i in range(settings.workers)
    ]
    tasks = [asyncio.create_task(w.run(), name=w.consumer) for w in workers]
    app[state.WORKER_TASKS] = tasks
    if workers:
        log.info("started %d workers as %s-*", len(workers), settings.consumer_name)
    yield
    for worker in workers:
        worker.stop()
    if tasks:
        _, late = await asyncio.wait(tasks, timeout=settings.shutdown_grace_seconds)
        for task in late:
            task.cancel()
        for task in late:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _add_routes(app: web.Application) -> None:
    docs = SwaggerDocs(
        app,
        validate=False,
        info=SwaggerInfo(
            title="Model service",
            version=__version__,
            description="Predictions from a model, answered at once or queued on a Redis Stream.",
        ),
        components=str(_COMPONENTS),
        # No external validator: the page must work without internet access.
        swagger_ui_settings=SwaggerUiSettings(path="/docs/", validatorUrl=None),
    )
    docs.add_routes(
        [
            web.post("/predict", predict),
            web.get("/predict/{prediction_id}", get_prediction, allow_head=False),
        ]
    )


def create_app(settings: Settings) -> web.Application:
    """Builds the application; nothing starts until the app is run."""
    app = web.Application(middlewares=[error_middleware])
    app[state.SETTINGS] = settings
    if settings.redis_url:
        app[state.REDIS_URL] = settings.redis_url
    else:
        app.cleanup_ctx.append(embedded_redis_ctx)
    app.cleanup_ctx.append(redis_ctx)
    app.cleanup_ctx.append(model_ctx)
    app.cleanup_ctx.append(workers_ctx)
    _add_routes(app)
    return app
