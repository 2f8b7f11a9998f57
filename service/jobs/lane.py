"""The direct lane: jobs a replica just submitted and someone there waits for (Prefer:
wait) are run on that replica at once, started and delivered by the submit script itself
(submit.lua), instead of waiting for a worker's read and mark."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from service.errors import ShuttingDown
from service.job import Entry
from service.redis.keys import Keys

log = logging.getLogger(__name__)


class DirectLane:
    """Runs at once the jobs this replica just submitted and waits for (Prefer: wait).

    When no entry waits undelivered, submit.lua starts such jobs and delivers them to this
    lane's ``consumer`` in the same call, so they skip a worker's blocked read and its mark
    call: two of the round trips on a waited job's path. They are then ordinary pending
    entries of that consumer, so heartbeats, and a reclaim by another replica after a
    crash, apply as to any worker's batch. At most ``room`` batches run in the lane at once;
    beyond that (or while older entries wait undelivered, which keeps the queue's order),
    submits queue as usual.

    The queue is given the lane when it is built (`JobQueue(lane=...)`), and the lane is
    given what runs its batches (`run`, a worker's `run_started`) once the workers exist.
    """

    def __init__(self, consumer: str, room: int) -> None:
        self.consumer = consumer
        self._room = room
        self._run: Callable[[Keys, list[Entry]], Coroutine[Any, Any, None]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def open(self, run: Callable[[Keys, list[Entry]], Coroutine[Any, Any, None]]) -> None:
        """Starts taking batches, which ``run`` runs (they are started already)."""
        self._run = run

    def has_room(self) -> bool:
        return self._run is not None and not self._closed and len(self._tasks) < self._room

    def close(self) -> list[asyncio.Task[None]]:
        """Takes no more batches (one delivered later stays pending for a reclaim) and
        answers the batches still running."""
        self._closed = True
        return list(self._tasks)

    def deliver(self, keys: Keys, entries: list[Entry]) -> None:
        if entries and self._run is not None and not self._closed:
            task = asyncio.create_task(self._run(keys, entries))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        failure = None if task.cancelled() else task.exception()
        if failure is None or isinstance(failure, ShuttingDown):
            return  # done, or handed back to the queue by a stopping replica
        # Its entries stay pending: reclaimed later, as after a worker's failed batch.
        log.warning("%s: a direct batch failed: %s", self.consumer, failure)
