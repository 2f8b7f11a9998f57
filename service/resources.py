"""The resources of a replica, as aiohttp cleanup contexts: started in order at start-up,
stopped in reverse order at shutdown: the models, the private Redis, the Redis client and
what works on it. The tasks that run on them (workers, webhook deliveries) are in
`service.background`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import Redis

from service.blobs import open_store
from service.errors import StoreUnavailable
from service.execution.batching import Batchers
from service.execution.executor import Executor
from service.execution.memory import release_freed_memory
from service.http import state
from service.http.docs import add_model_schemas
from service.http.lifecycle import Lifecycle
from service.http.openai_batches import reader, shape_of
from service.jobs.batches import Batches
from service.jobs.dead_letters import DeadLetters
from service.jobs.files import Files
from service.jobs.intake import FileSettings
from service.jobs.lane import DirectLane
from service.jobs.outputs import Outputs, OutputSettings
from service.jobs.queue import JobQueue, QueueSettings
from service.jobs.store import ResultStore
from service.jobs.streams import Streams
from service.jobs.waiting import Waiters
from service.jobs.webhooks import Policy
from service.jobs.worker import StreamSlots
from service.models import ModelRegistry, model_configs
from service.redis.calls import Scripts
from service.redis.calls.records import Limits
from service.redis.connection import REDIS_FAILURES, close, connect, server_version, unavailable
from service.redis.durable import Durable
from service.redis.embedded import RedisServer
from service.redis.keys import Names, Partitions
from service.redis.partitioning import open_partitions
from service.redis.url import parse as parse_redis_url
from service.settings import Settings

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
        settings.stream_threads,
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
    """Connects to Redis and opens the queue's partitions, then builds what works on them:
    the scripts, the streams, the queue, the records, the dead letters and the waiters."""
    settings = app[state.SETTINGS]
    target = parse_redis_url(app[state.REDIS_URL])
    redis = await connect(target, block_ms=settings.read_block_ms)
    try:
        scripts = Scripts(redis, await server_version(redis))
        partitions = await open_partitions(
            redis, names(settings), settings.queue_partitions, cluster=target.mode == "cluster"
        )
    except BaseException:
        await close(redis)
        raise
    app[state.REDIS] = redis
    app[state.SCRIPTS] = scripts
    app[state.PARTITIONS] = partitions
    app[state.STREAMS] = streams = Streams(redis, partitions)
    durable = Durable(redis, target) if settings.durable_submit else None
    if durable is not None:
        app[state.DURABLE] = durable
    _stores(app, scripts, partitions, durable)
    group = await _ensure_streams(redis, streams)
    app[state.WAITERS] = waiters = Waiters(target, partitions, settings.consumer_name)
    app[state.OUTPUTS].appended = waiters.appended
    waiters.start()
    yield
    if group is not None:
        group.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await group
    await waiters.stop()
    if durable is not None:
        await durable.aclose()
    await close(redis)


def _stores(
    app: web.Application, scripts: Scripts, partitions: Partitions, durable: Durable | None
) -> None:
    """The queue (and its lane), the records and the dead letters of the app."""
    settings = app[state.SETTINGS]
    ttl = settings.result_ttl_seconds
    limits = Limits(ttl, settings.max_deliveries, settings.job_timeout_seconds)
    app[state.RESULTS] = ResultStore(
        scripts, partitions, limits, settings.redis_timeout_seconds, settings.consumer_name
    )
    # The lane has a consumer of its own: no worker's own-pending read may take its
    # batches while they run; after a crash they are reclaimed like any idle entries.
    # It takes batches once the workers run (workers_ctx opens it).
    app[state.LANE] = lane = DirectLane(f"{settings.consumer_name}-lane", settings.workers)
    app[state.QUEUE] = JobQueue(
        scripts,
        app[state.STREAMS],
        QueueSettings(
            ttl, settings.max_queue, settings.redis_timeout_seconds, settings.consumer_name
        ),
        lane=lane if settings.workers else None,
        durable=durable,
        activity=app[state.METRICS].activity,
    )
    app[state.DEAD_LETTERS] = DeadLetters(app[state.REDIS], scripts, partitions, ttl)
    app[state.STREAM_SLOTS] = StreamSlots(settings.stream_threads)
    app[state.OUTPUTS] = Outputs(
        app[state.REDIS],
        scripts,
        partitions,
        OutputSettings(
            ttl,
            settings.stream_webhook_interval_seconds,
            settings.consumer_name,
            settings.redis_timeout_seconds,
        ),
    )


async def _ensure_streams(redis: Redis, streams: Streams) -> asyncio.Task[None] | None:
    """Makes the streams and groups; a Redis out of memory or read-only cannot yet: then
    the replica starts anyway (not ready), and a task keeps trying in the background."""
    try:
        await streams.ensure()
    except REDIS_FAILURES as exc:
        if unavailable(exc) is None:
            await close(redis)
            raise
        return asyncio.create_task(_keep_ensuring(streams), name="consumer-group")
    return None


async def _keep_ensuring(streams: Streams) -> None:
    waited = False
    while True:
        try:
            await streams.ensure()
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


async def files_ctx(app: web.Application) -> AsyncIterator[None]:
    """The blob store of job files (BLOB_URL) and a task that removes them when due. An
    unreachable store does not stop the start: the requests that need it answer 503."""
    settings = app[state.SETTINGS]
    store = open_store(settings.blob_url, settings.data_dir)
    urls = Policy(
        settings.input_url_allowed_hosts,
        settings.input_url_allow_private,
        "INPUT_URL_ALLOWED_HOSTS",
    )
    files = Files(
        store,
        app[state.REDIS],
        names(settings).files,
        FileSettings(
            settings.max_file_bytes,
            settings.result_ttl_seconds,
            settings.blob_presign,
            urls,
            settings.input_url_timeout_seconds,
            settings.data_dir / "uploads",
        ),
        app[state.METRICS],
    )
    app[state.FILES] = files
    try:
        await store.ping()
    except StoreUnavailable as exc:
        log.warning("%s; requests with files answer 503 until it answers", exc)
    every = min(30.0, max(1.0, settings.result_ttl_seconds / 4))  # a few sweeps per TTL
    sweeper = asyncio.create_task(files.sweep_forever(every), name="file-sweep")
    # The batches of the OpenAI-compatible routes: their files in the same store.
    batches = app[state.BATCHES] = Batches(
        app[state.REDIS], names(settings), store, settings.batch_ttl_seconds
    )
    mover = asyncio.create_task(
        batches.move_all_forever(BATCH_MOVE_SECONDS, reader(app), shape_of(app)),
        name="batch-mover",
    )
    yield
    for task in (sweeper, mover):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await files.close()


#: How often each replica moves the batches not ended on (a read of one moves it too).
BATCH_MOVE_SECONDS = 2.0


def names(settings: Settings) -> Names:
    """The names the queue's keys are made of, as the settings give them."""
    return Names(settings.stream, settings.group, settings.key_prefix)
