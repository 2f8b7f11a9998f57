"""The app factory: routes, the error middleware, OpenAPI docs and every resource's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from redis.exceptions import RedisError

from . import state
from .batching import Batchers
from .completions import Completions
from .connection import connect, unavailable
from .delivery import Dispatcher
from .docs import add_model_schemas, setup_docs
from .embedded import RedisServer
from .errors import Overloaded
from .executor import Executor
from .health import live, ready
from .job_routes import cancel_prediction, get_prediction, prediction_events
from .keys import Keys
from .lane import DirectLane
from .lifecycle import Lifecycle, SyncGate
from .memory import release_freed_memory
from .metrics import Metrics
from .metrics_route import metrics
from .middlewares import auth_middleware, request_middleware
from .model_routes import get_model, list_models
from .models import ModelRegistry, model_configs
from .queue import JobQueue
from .results import ResultStore
from .routes import predict, predict_batch, predict_with_model
from .settings import Settings
from .worker import Worker

log = logging.getLogger(__name__)

_PREDICTION = "/predict/{prediction_id:(?!batch$)[^/]+}"


async def models_ctx(app: web.Application) -> AsyncIterator[None]:
    """Loads every model once (first, so a bad model stops startup before anything else)."""
    settings = app[state.SETTINGS]
    configs, default = model_configs(settings)
    # Loading reads files and builds large objects: keep it off the loop.
    registry = await asyncio.to_thread(ModelRegistry.load, configs, default)
    executor = Executor(
        settings.executor_threads,
        settings.process_workers,
        [c for c in configs if c.execution == "process"],
    )
    await executor.warm_up()
    add_model_schemas(app[state.OPENAPI_SPEC], registry)
    app[state.MODELS] = registry
    app[state.EXECUTOR] = executor
    app[state.BATCHERS] = Batchers(
        registry.models,
        executor,
        settings.max_batch_size,
        settings.max_batch_delay_ms / 1000,
        app[state.METRICS],
        settings.inline_max_ms / 1000,
    )
    release_freed_memory()
    yield
    executor.shutdown()
    await asyncio.to_thread(registry.teardown)


async def embedded_redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """Starts a private redis-server when no REDIS_URL is set, restarts it if it dies, and
    stops it on exit (after the workers drained: this context is cleaned up after them)."""
    settings = app[state.SETTINGS]
    server = RedisServer(settings.data_dir, settings.embedded_redis_port)
    app[state.REDIS_URL] = await asyncio.to_thread(server.start)
    app[state.EMBEDDED_REDIS] = server
    watchdog = asyncio.create_task(_keep_alive(server, app[state.LIFECYCLE]), name="redis-watch")
    yield
    watchdog.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watchdog
    await asyncio.to_thread(server.stop)


_WATCH_SECONDS = 0.5
_RESTART_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0)


async def _keep_alive(server: RedisServer, lifecycle: Lifecycle) -> None:
    """Restarts the private redis-server when it exits on its own (its AOF brings the data
    back). While it cannot be restarted, liveness fails so that a supervisor restarts the
    whole replica."""
    failures = 0
    while True:
        await asyncio.sleep(_WATCH_SECONDS if not failures else _RESTART_BACKOFF_SECONDS[-1])
        if server.alive():
            continue
        log.error("the private redis-server (pid %s) exited; restarting it", server.pid)
        try:
            await asyncio.to_thread(server.start)
        except (OSError, RuntimeError) as exc:
            failures += 1
            lifecycle.fault = f"the private redis-server cannot be restarted: {exc}"
            log.error("%s (attempt %d)", lifecycle.fault, failures)
            continue
        failures = 0
        lifecycle.fault = None
        log.warning("the private redis-server runs again (pid %s)", server.pid)


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[state.SETTINGS]
    redis = await connect(app[state.REDIS_URL], block_ms=settings.read_block_ms)
    keys = Keys.from_settings(settings)
    version = str((await redis.info("server"))["redis_version"])
    results = ResultStore(
        redis,
        keys,
        settings.result_ttl_seconds,
        settings.max_deliveries,
        settings.job_timeout_seconds,
        finish_under_oom=int(version.split(".")[0]) >= 7,
    )
    queue = JobQueue(redis, keys, settings.result_ttl_seconds, settings.max_queue)
    # A Redis out of memory or read-only cannot create the group yet: start anyway (not
    # ready), and keep trying.
    group = asyncio.create_task(_ensure_group(queue), name="consumer-group")
    completions = Completions(app[state.REDIS_URL], keys)
    completions.start()
    app[state.REDIS] = redis
    app[state.RESULTS] = results
    app[state.QUEUE] = queue
    app[state.COMPLETIONS] = completions
    yield
    group.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await group
    await completions.stop()
    await redis.aclose()


async def _ensure_group(queue: JobQueue) -> None:
    waited = False
    while True:
        try:
            await queue.ensure_group()
        except (RedisError, OSError) as exc:
            reason = unavailable(exc)
            if reason is None:
                raise
            if not waited:
                log.warning(
                    "cannot create the consumer group yet (%s); trying every second", reason
                )
                waited = True
            await asyncio.sleep(1.0)
            continue
        if waited:
            log.info("consumer group created")
        return


async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
    """Starts WORKERS consumer tasks; on exit: stop reading, a grace period, then cancel."""
    settings = app[state.SETTINGS]

    def make_worker(consumer: str) -> Worker:
        return Worker(
            queue=app[state.QUEUE],
            results=app[state.RESULTS],
            models=app[state.MODELS],
            batchers=app[state.BATCHERS],
            metrics=app[state.METRICS],
            consumer=f"{settings.consumer_name}-{consumer}",
            batch_size=settings.max_batch_size,
            block_ms=settings.read_block_ms,
            visibility_timeout=settings.visibility_timeout_seconds,
            job_timeout=settings.job_timeout_seconds,
            completions=app[state.COMPLETIONS],
        )

    workers = [make_worker(str(i)) for i in range(settings.workers)]
    tasks = [asyncio.create_task(w.run(), name=w.consumer) for w in workers]
    app[state.WORKER_TASKS] = tasks
    queue = app[state.QUEUE]
    # The lane has a consumer of its own: no worker's own-pending read may take its
    # batches while they run; after a crash they are reclaimed like any idle entries.
    lane = DirectLane(make_worker("lane"), len(workers)) if workers else None
    queue.lane = lane
    lane_batches: list[asyncio.Task[None]] = []

    def stop_reading() -> None:  # at SIGTERM: the drain runs beside in-flight requests
        queue.lane = None
        for worker in workers:
            worker.stop()
        if lane is not None:
            lane_batches.extend(lane.close())

    lifecycle = app[state.LIFECYCLE]
    lifecycle.on_stop.append(stop_reading)
    if workers:
        log.info("started %d workers as %s-*", len(workers), settings.consumer_name)
    yield
    stop_reading()
    await _finish(tasks + lane_batches, lifecycle.left(settings.shutdown_grace_seconds))


async def webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    """Delivers webhooks from this replica unless WEBHOOK_DELIVERIES is 0."""
    settings = app[state.SETTINGS]
    if settings.webhook_deliveries == 0:
        yield
        return
    dispatcher = Dispatcher(
        app[state.REDIS], Keys.from_settings(settings), app[state.RESULTS], settings
    )
    task = asyncio.create_task(dispatcher.run(), name="webhooks")
    lifecycle = app[state.LIFECYCLE]
    lifecycle.on_stop.append(dispatcher.stop)
    yield
    dispatcher.stop()
    await _finish([task], lifecycle.left(settings.shutdown_grace_seconds))


async def _finish(tasks: list[asyncio.Task[None]], grace: float) -> None:
    """Waits up to ``grace`` seconds for stopped tasks, then cancels the late ones."""
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=grace)
    for task in late:
        task.cancel()
    for task in late:
        with contextlib.suppress(asyncio.CancelledError):
            await task


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
    if state.COMPLETIONS in app:
        app[state.COMPLETIONS].release()
    if state.BATCHERS in app:
        batchers = app[state.BATCHERS]
        cut = max(0.0, settings.shutdown_grace_seconds - _ANSWER_BEFORE_DEADLINE)
        asyncio.get_running_loop().call_later(
            cut,
            batchers.abandon,
            Overloaded("The replica is shutting down; try again (another replica will answer)."),
        )


#: Every route. A route needs the API key (when API_KEY is set) unless it is marked public
#: here; the Swagger page and its spec are public too.
ROUTES: list[tuple[web.RouteDef, bool]] = [
    (web.post("/predict", predict), False),
    (web.post("/predict/batch", predict_batch), False),
    # Not "batch": that path is POST /predict/batch alone.
    (web.get(_PREDICTION, get_prediction, allow_head=False), False),
    (web.delete(_PREDICTION, cancel_prediction), False),
    (web.get(_PREDICTION + "/events", prediction_events, allow_head=False), False),
    (web.get("/models", list_models, allow_head=False), False),
    (web.get("/models/{name}", get_model, allow_head=False), False),
    (web.post("/models/{name}/predict", predict_with_model), False),
    (web.get("/health/live", live, allow_head=False), True),
    (web.get("/health/ready", ready, allow_head=False), True),
    (web.get("/metrics", metrics, allow_head=False), True),
]


def create_app(settings: Settings) -> web.Application:
    """Builds the application; nothing starts until the app is run."""
    middlewares = [request_middleware]
    if settings.api_key:
        middlewares.append(auth_middleware)
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    app[state.SETTINGS] = settings
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
    app.cleanup_ctx.append(workers_ctx)
    app.cleanup_ctx.append(webhooks_ctx)
    public_handlers = {route.handler for route, public in ROUTES if public}
    app[state.OPENAPI_SPEC] = setup_docs(
        app, [route for route, _ in ROUTES], public_handlers, auth=bool(settings.api_key)
    )
    # Matched by route object in the auth middleware: the routes above marked public and
    # everything the Swagger page registered (under /docs).
    app[state.PUBLIC_ROUTES] = frozenset(
        route
        for route in app.router.routes()
        if route.handler in public_handlers
        or (route.resource is not None and route.resource.canonical.startswith("/docs"))
    )
    return app
