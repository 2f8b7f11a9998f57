"""Waiting for jobs without polling: a replica where someone waits for a job joins the
job's watchers in Redis (with the read that starts the wait, or with the submit), and the
scripts that start or end the job tell the watchers, each on its own channel; the replica
wakes its local waiters. A job no one waits for is told to no one. Also the two ways
handlers wait: `submit_and_wait` (Prefer: wait) and `wait_for_record` (?wait=).

A waiter on replica A is woken by a job that replica B finished. A waiter always re-reads
the record after it is woken (or its time is up), so a lost announcement (Redis restarting,
the listener reconnecting) costs at most the wait, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator

from service.execution.loop import BoundLoop
from service.execution.timers import Deadlines
from service.job import JobRecord, NewJob
from service.jobs.queue import JobQueue
from service.jobs.store import ResultStore
from service.redis.channels import Channels
from service.redis.keys import Keys, Partitions
from service.redis.url import RedisTarget
from service.redis.words import Told

log = logging.getLogger(__name__)

_SWEEP_SECONDS = 1.0


class Waiters:
    """Local waiters, woken by what this replica's own channel of every partition tells of
    the jobs it watches: they ended, started, or have new chunks. A waiter asks for the
    end, for any change of status, and maybe for new chunks too. The first read of a wait
    must be one that watches (`ResultStore.get(..., watch=True)`)."""

    def __init__(self, target: RedisTarget, partitions: Partitions, replica: str) -> None:
        self._channels = Channels(target, partitions, replica, self._announced, self._wake_all)
        # Waiters for the end of a job, for any change of its status, for its new chunks.
        self._ends: dict[str, set[asyncio.Future[JobRecord | None]]] = {}
        self._changes: dict[str, set[asyncio.Future[JobRecord | None]]] = {}
        self._outputs: dict[str, set[asyncio.Future[JobRecord | None]]] = {}
        # Jobs followed here (`following`): the status changes heard of each, and by how
        # many followers.
        self._moves: dict[str, int] = {}
        self._followers: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._loop = BoundLoop()
        #: Set when the replica stops: waits answer at once from then on.
        self.released = False
        # Waits whose client may leave: checked once a second, and woken if it has left.
        self._leavers: dict[asyncio.Future[JobRecord | None], Callable[[], bool]] = {}
        self._sweep_timer: asyncio.TimerHandle | None = None
        # Time up: the future is answered None (the waiter then reads the record).
        self._deadlines = Deadlines(_time_up)

    def start(self) -> None:
        self._channels.start()

    async def stop(self) -> None:
        await self._channels.stop()

    def _announced(self, keys: Keys, heard: Told, data: bytes) -> None:
        if not (
            self._changes or self._moves or self._outputs or (heard is Told.ENDED and self._ends)
        ):
            return  # no one here waits for these: not worth parsing
        for key in data.split(b","):
            self._wake(keys.prediction_id(key), heard)

    def _wake(self, prediction_id: str, heard: Told, record: JobRecord | None = None) -> None:
        woken: tuple[dict[str, set[asyncio.Future[JobRecord | None]]], ...]
        if heard is not Told.OUTPUT and prediction_id in self._moves:
            self._moves[prediction_id] += 1
        if heard is Told.ENDED:
            woken = (self._changes, self._ends, self._outputs)
        else:
            woken = (self._changes,) if heard is Told.STARTED else (self._outputs,)
        for waiters in woken:
            waiting = waiters.pop(prediction_id, None)
            if waiting is not None:
                for future in waiting:
                    if not future.done():
                        future.set_result(record)

    def appended(self, prediction_id: str) -> None:
        """New chunks of a job followed here, appended here (see `Outputs.appended`)."""
        self._wake(prediction_id, Told.OUTPUT)

    def waited_for(self, prediction_id: str) -> bool:
        """Whether someone here waits for this job to end."""
        return prediction_id in self._ends or prediction_id in self._changes

    def ended(self, record: JobRecord) -> None:
        """Hands a final record that this replica just wrote to its local waiters: they
        need not read it back (the channel announcement still reaches everyone else)."""
        self._wake(record.prediction_id, Told.ENDED, record)

    def release(self) -> None:
        """The replica is stopping: every waiter is answered now with the record as it is
        (a Prefer: wait submit gets its 202 and id), and later waits do not wait."""
        self.released = True
        self._wake_all()

    def _wake_all(self) -> None:
        for prediction_id in {*self._ends, *self._changes, *self._outputs, *self._moves}:
            self._wake(prediction_id, Told.ENDED)

    @contextlib.contextmanager
    def following(self, prediction_id: str) -> Iterator[None]:
        """While inside, the status changes heard of the job are counted (`moves`): a
        follower woken for new chunks alone need not read the record again."""
        self._followers[prediction_id] = self._followers.get(prediction_id, 0) + 1
        self._moves.setdefault(prediction_id, 0)
        try:
            yield
        finally:
            left = self._followers.pop(prediction_id) - 1
            if left:
                self._followers[prediction_id] = left
            else:
                self._moves.pop(prediction_id, None)

    def followed(self, prediction_id: str) -> bool:
        """Whether a follower here (an /events stream) follows the job now."""
        return prediction_id in self._followers

    def moves(self, prediction_id: str) -> int:
        """How many status changes of a job followed here were heard (see `following`)."""
        return self._moves.get(prediction_id, 0)

    def register(
        self, prediction_id: str, changes: bool = False, outputs: bool = False
    ) -> asyncio.Future[JobRecord | None]:
        """A future resolved when the job ends (or, with ``changes``, changes status; with
        ``outputs``, also when it has new chunks). Register before the job can end, then
        pass it to `wait` or `changed`, or `unregister` it."""
        future: asyncio.Future[JobRecord | None] = self._loop().create_future()
        waiters = self._changes if changes else self._ends
        waiters.setdefault(prediction_id, set()).add(future)
        if outputs:
            self._outputs.setdefault(prediction_id, set()).add(future)
        return future

    async def changed(
        self,
        prediction_id: str,
        future: asyncio.Future[JobRecord | None],
        seconds: float,
        gone: Callable[[], bool] | None = None,
    ) -> None:
        """Waits on a registered ``future`` (see `register`) for at most ``seconds``, or
        until the client is ``gone``; then unregisters it."""
        loop = self._loop()
        self._deadlines.expire_after(loop, future, seconds)
        if gone is not None:
            self._leavers[future] = gone
            if self._sweep_timer is None:
                self._sweep_timer = loop.call_later(_SWEEP_SECONDS, self._sweep)
        try:
            await future
        finally:
            self.unregister(prediction_id, future)
            self._leavers.pop(future, None)

    def unregister(self, prediction_id: str, future: asyncio.Future[JobRecord | None]) -> None:
        for waiters in (self._ends, self._changes, self._outputs):
            waiting = waiters.get(prediction_id)
            if waiting is not None and future in waiting:
                waiting.discard(future)
                if not waiting:
                    del waiters[prediction_id]

    async def wait(
        self,
        prediction_id: str,
        seconds: float,
        read: Callable[[], Awaitable[JobRecord | None]],
        until: Callable[[JobRecord | None], bool] = lambda r: r is None or r.status.final,
        *,
        changes: bool = False,
        watching: asyncio.Future[JobRecord | None] | None = None,
        gone: Callable[[], bool] | None = None,
    ) -> JobRecord | None:
        """The job's record once ``until(record)`` holds (by default: it is final), or as
        it is after ``seconds``. Wakes on the job's end, or with ``changes`` on any change
        of status. ``watching`` (from `register`, taken before the job was submitted) skips
        the first read: the job was just queued. ``gone`` tells whether the client left:
        then the wait ends early (within about a second) and answers None."""
        loop = self._loop()
        deadline = loop.time() + seconds
        future = watching
        while True:
            if future is not None and self.released:
                self.unregister(prediction_id, future)
                future = None
            if future is None:
                # Registered before reading: a change announced in between is not missed.
                future = self.register(prediction_id, changes)
                try:
                    record = await read()
                except BaseException:
                    self.unregister(prediction_id, future)
                    raise
                if until(record) or deadline - loop.time() <= 0 or self.released:
                    self.unregister(prediction_id, future)
                    return record
            self._deadlines.expire_after(loop, future, deadline - loop.time())
            if gone is not None:
                self._leavers[future] = gone
                if self._sweep_timer is None:
                    self._sweep_timer = loop.call_later(_SWEEP_SECONDS, self._sweep)
            try:
                handed = await future  # a record when this replica ended the job
            finally:
                self.unregister(prediction_id, future)
                self._leavers.pop(future, None)
            if gone is not None and gone():
                return None
            if handed is not None and until(handed):
                return handed
            future = None

    def _sweep(self) -> None:
        """Wakes the waits whose clients left (an abandoned long-poll must not be held,
        with its memory, for its whole wait)."""
        self._sweep_timer = None
        for future, gone in list(self._leavers.items()):
            if gone() and not future.done():
                future.set_result(None)
        if self._leavers:
            self._sweep_timer = self._loop().call_later(_SWEEP_SECONDS, self._sweep)


def _time_up(future: asyncio.Future[JobRecord | None]) -> None:
    if not future.done():
        future.set_result(None)


async def wait_for_record(
    results: ResultStore,
    waiters: Waiters,
    prediction_id: str,
    seconds: float,
    *,
    gone: Callable[[], bool] | None = None,
    registered: asyncio.Future[JobRecord | None] | None = None,
) -> JobRecord | None:
    """The record once the job is final, or as it is after ``seconds``; None when the
    client left meanwhile (``gone``) or the job is unknown."""
    return await waiters.wait(
        prediction_id,
        seconds,
        lambda: results.get(prediction_id, watch=True),
        watching=registered,
        gone=gone,
    )


async def submit_and_wait(
    queue: JobQueue,
    results: ResultStore,
    waiters: Waiters,
    job: NewJob,
    seconds: float,
    *,
    gone: Callable[[], bool] | None = None,
) -> tuple[str, JobRecord | None]:
    """Queues ``job``, then waits up to ``seconds`` for it to end: its id and its record.

    The job is registered before it is queued, so its end cannot be announced unseen and
    the wait needs no first read.
    """
    watching = waiters.register(job.prediction_id)
    try:
        prediction_id = await queue.submit(job)
    except BaseException:
        waiters.unregister(job.prediction_id, watching)
        raise
    registered: asyncio.Future[JobRecord | None] | None = watching
    if prediction_id != job.prediction_id:  # an earlier job's id, by Idempotency-Key
        waiters.unregister(job.prediction_id, watching)
        registered = None
    record = await wait_for_record(
        results, waiters, prediction_id, seconds, gone=gone, registered=registered
    )
    return prediction_id, record
