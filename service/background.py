"""The background tasks of a replica, as aiohttp cleanup contexts: the queue workers (and
the direct lane), and the webhook dispatcher. Each starts once the resources it needs are
up (`service.resources`) and, at shutdown, stops reading, finishes within what is left of
SHUTDOWN_GRACE_SECONDS, then is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from service import __version__
from service.http import state
from service.jobs.consumer import Consumer, retire
from service.jobs.delivery import DeliverySettings, Dispatcher
from service.jobs.reads import ConsumerSettings
from service.jobs.runner import JobRunner, RunLimits
from service.jobs.worker import Worker
from service.redis.connection import REDIS_FAILURES

log = logging.getLogger(__name__)


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
    reads = ConsumerSettings(
        batch_size or settings.max_batch_size,
        block_ms or settings.read_block_ms,
        int((visibility_timeout or settings.visibility_timeout_seconds) * 1000),
        settings.result_ttl_seconds,
    )
    return Worker(
        Consumer(
            app[state.REDIS],
            app[state.SCRIPTS],
            app[state.STREAMS],
            app[state.PARTITIONS][partition],
            consumer,
            reads,
        ),
        app[state.RESULTS],
        JobRunner(
            app[state.MODELS],
            app[state.BATCHERS],
            app[state.OUTPUTS],
            RunLimits(settings.job_timeout_seconds, settings.max_stream_chunks),
            app.get(state.TRACING),
            app.get(state.FILES),
        ),
        app[state.METRICS],
        app[state.WAITERS],
        app[state.STREAM_SLOTS],
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
    tasks = [asyncio.create_task(w.run(), name=w.name) for w in workers]
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
        gone = [w.name for w in workers] + [lane.consumer]
        with contextlib.suppress(*REDIS_FAILURES, TimeoutError):
            await asyncio.wait_for(
                retire(app[state.SCRIPTS], app[state.PARTITIONS], gone),
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
        app[state.SCRIPTS],
        app[state.PARTITIONS],
        app[state.RESULTS],
        DeliverySettings(
            f"{settings.consumer_name}-webhooks",
            settings.webhook_deliveries,
            settings.webhook_secret,
            settings.webhook_timeout_seconds,
            settings.webhook_retry_seconds,
            settings.webhook_max_age_seconds,
            app[state.WEBHOOK_POLICY],
        ),
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


async def activity_ctx(app: web.Application) -> AsyncIterator[None]:
    """Writes what this replica counted for the dashboard, and its word about itself (its
    workers and models), to Redis every few seconds; at exit, a last time, and takes its
    word back."""
    settings = app[state.SETTINGS]
    redis, names = app[state.REDIS], app[state.PARTITIONS].names
    activity = app[state.METRICS].activity
    count = len(app[state.PARTITIONS])
    about = {
        "workers": max(settings.workers, count) if settings.workers else 0,
        "models": sorted(app[state.MODELS].models),
        "version": __version__,
        "started": time.time(),
    }
    task = asyncio.create_task(
        activity.flush_forever(redis, names, settings.consumer_name, about), name="activity"
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    lifecycle = app[state.LIFECYCLE]
    await activity.leave(
        redis, names, settings.consumer_name, lifecycle.left(settings.shutdown_grace_seconds)
    )
