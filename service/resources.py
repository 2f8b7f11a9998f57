"""Every resource of a replica, as an aiohttp cleanup context: started in order at
start-up, stopped in reverse order at shutdown (models, the private Redis, the Redis
client and its stores, the workers, the webhook dispatcher)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from service.execution.batching import Batchers
from service.execution.executor import Executor
from service.execution.memory import release_freed_memory
from service.http import state
from service.http.docs import add_model_schemas
from service.http.lifecycle import Lifecycle
from service.jobs.dead_letters import DeadLetters
from service.jobs.delivery import Dispatcher
from service.jobs.lane import DirectLane
from service.jobs.queue import JobQueue
from service.jobs.store import ResultStore
from service.jobs.waiting import Completions
from service.jobs.worker import Worker
from service.models import ModelRegistry, model_configs
from service.redis.connection import REDIS_FAILURES, connect, server_version, unavailable
from service.redis.durable import Durable
from service.redis.embedded import RedisServer
from service.redis.partitioning import open_partitions
from service.redis.url import parse as parse_redis_url

log = logging.getLogger(__name__)


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
    target = parse_redis_url(app[state.REDIS_URL])
    redis = await connect(target, block_ms=settings.read_block_ms)
    version = await server_version(redis)
    try:
        partitions = await open_partitions(redis, settings, cluster=target.mode == "cluster")
    except BaseException:
        await redis.aclose()
        raise
    results = ResultStore(
        redis,
        partitions,
        settings.result_ttl_seconds,
        settings.max_deliveries,
        settings.job_timeout_seconds,
        version=version,
        timeout=settings.redis_timeout_seconds,
    )
    # The lane has a consumer of its own: no worker's own-pending read may take its
    # batches while they run; after a crash they are reclaimed like any idle entries.
    # It takes batches once the workers run (workers_ctx opens it).
    lane = DirectLane(f"{settings.consumer_name}-lane", settings.workers)
    durable = Durable(redis, target) if settings.durable_submit else None
    queue = JobQueue(
        redis,
        partitions,
        settings.result_ttl_seconds,
        settings.max_queue,
        lane=lane if settings.workers else None,
        version=version,
        durable=durable,
        timeout=settings.redis_timeout_seconds,
    )
    # A Redis out of memory or read-only cannot create the groups yet: start anyway (not
    # ready), and keep trying in the background.
    group: asyncio.Task[None] | None = None
    try:
        await queue.ensure_group()
    except REDIS_FAILURES as exc:
        if unavailable(exc) is None:
            await redis.aclose()
            raise
        group = asyncio.create_task(_ensure_group(queue), name="consumer-group")
    completions = Completions(target, partitions)
    completions.start()
    app[state.REDIS] = redis
    app[state.PARTITIONS] = partitions
    app[state.RESULTS] = results
    app[state.DEAD_LETTERS] = DeadLetters(
        redis, partitions, settings.result_ttl_seconds, version=version
    )
    app[state.QUEUE] = queue
    app[state.LANE] = lane
    if durable is not None:
        app[state.DURABLE] = durable
    app[state.COMPLETIONS] = completions
    yield
    if group is not None:
        group.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await group
    await completions.stop()
    if durable is not None:
        await durable.aclose()
    await redis.aclose()


async def _ensure_group(queue: JobQueue) -> None:
    waited = False
    while True:
        try:
            await queue.ensure_group()
        except REDIS_FAILURES as exc:
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


def make_worker(
    app: web.Application,
    consumer: str,
    *,
    partition: int = 0,
    batch_size: int | None = None,
    block_ms: int | None = None,
    visibility_timeout: float | None = None,
) -> Worker:
    """A worker of this app's queue (the settings' values unless given)."""
    settings = app[state.SETTINGS]
    return Worker(
        partition=app[state.PARTITIONS][partition],
        queue=app[state.QUEUE],
        results=app[state.RESULTS],
        models=app[state.MODELS],
        batchers=app[state.BATCHERS],
        metrics=app[state.METRICS],
        consumer=consumer,
        batch_size=batch_size or settings.max_batch_size,
        block_ms=block_ms or settings.read_block_ms,
        visibility_timeout=visibility_timeout or settings.visibility_timeout_seconds,
        job_timeout=settings.job_timeout_seconds,
        completions=app[state.COMPLETIONS],
        tracing=app.get(state.TRACING),
    )


async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
    """Starts WORKERS consumer tasks; on exit: stop reading, a grace period, then cancel."""
    settings = app[state.SETTINGS]

    # Every partition is read, even with fewer WORKERS than partitions: worker i reads
    # partition i mod their number.
    count = len(app[state.PARTITIONS])
    total = max(settings.workers, count) if settings.workers else 0
    workers = [
        make_worker(app, f"{settings.consumer_name}-{i}", partition=i % count) for i in range(total)
    ]
    tasks = [asyncio.create_task(w.run(), name=w.consumer) for w in workers]
    app[state.WORKER_TASKS] = tasks
    lane = app[state.LANE]
    if workers:
        lane.open(make_worker(app, lane.consumer).run_started)
    lane_batches: list[asyncio.Task[None]] = []

    def stop_reading() -> None:  # at SIGTERM: the drain runs beside in-flight requests
        for worker in workers:
            worker.stop()
        lane_batches.extend(lane.close())

    lifecycle = app[state.LIFECYCLE]
    lifecycle.on_stop.append(stop_reading)
    if workers:
        log.info(
            "started %d worker%s as %s-*",
            len(workers),
            "" if len(workers) == 1 else "s",
            settings.consumer_name,
        )
    yield
    stop_reading()
    await _finish(tasks + lane_batches, lifecycle.left(settings.shutdown_grace_seconds))
    if workers:  # this replica's consumers leave the groups, unless they still hold work
        with contextlib.suppress(*REDIS_FAILURES, TimeoutError):
            await asyncio.wait_for(
                app[state.QUEUE].retire([w.consumer for w in workers] + [lane.consumer]),
                max(0.1, lifecycle.left(settings.shutdown_grace_seconds)),
            )


async def webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    """Delivers webhooks from this replica unless WEBHOOK_DELIVERIES is 0."""
    settings = app[state.SETTINGS]
    if settings.webhook_deliveries == 0:
        yield
        return
    dispatcher = Dispatcher(
        app[state.REDIS],
        app[state.PARTITIONS],
        app[state.RESULTS],
        settings,
        tracing=app.get(state.TRACING),
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
