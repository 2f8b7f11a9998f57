"""The queue worker: read a batch, mark it processing, predict, write results and ack."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from redis.exceptions import RedisError

from service.errors import InvalidInput, ModelUnavailable, NotFound, ShuttingDown
from service.execution.batching import Batchers
from service.job import RUNNABLE, Entry, Outcome
from service.jobs.queue import JobQueue
from service.jobs.reports import report, report_given_up
from service.jobs.store import ResultStore
from service.jobs.waiting import Completions
from service.models import ModelRegistry
from service.observability.metrics import Metrics
from service.observability.tracing import Tracing
from service.redis.connection import REDIS_FAILURES, stream_gone, unavailable
from service.redis.keys import Keys

log = logging.getLogger(__name__)

_MAX_BACKOFF_SECONDS = 5.0
#: The outcome of a job still running when its Cancel-After passed (its result dropped).
_CANCELED = Outcome(ok=False, error="canceled: ran past its Cancel-After", canceled=True)
_NO_SPAN = contextlib.nullcontext()


def _gone(exc: BaseException) -> str:
    """What a read that failed for a missing stream or group (`stream_gone`) means."""
    text = str(exc)
    if "instance state changed" in text:
        return "the Redis node it read from is no longer a primary (a failover)"
    if "NOGROUP" in text:
        return "a stream or its consumer group is missing (deleted, or lost in a failover)"
    return "a stream it read was deleted"


class Held:
    """The entries a worker holds (read, or delivered by the lane, and not yet finished or
    handed back), by stream, kept claimed by a heartbeat: while anything is held, every
    ``interval`` one XCLAIM per stream (to itself) resets their idle time, so no one
    reclaims an entry that runs or waits for its turn behind the batches read with it. A
    timer, not a task, waits for the first beat: most batches end sooner and cost no claim.
    """

    def __init__(self, queue: JobQueue, consumer: str, interval: float) -> None:
        self._queue = queue
        self._consumer = consumer
        self._interval = interval
        self._ids: dict[Keys, dict[bytes, int]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._beats: set[asyncio.Task[None]] = set()

    def hold(self, keys: Keys, entries: list[Entry]) -> None:
        held = self._ids.setdefault(keys, {})
        for entry in entries:  # counted: a lane batch is held by the lane and by its run
            held[entry.entry_id] = held.get(entry.entry_id, 0) + 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)

    def release(self, keys: Keys, entries: list[Entry]) -> None:
        held = self._ids.get(keys)
        if held is None:
            return
        for entry in entries:
            left = held.get(entry.entry_id, 0) - 1
            if left > 0:
                held[entry.entry_id] = left
            else:
                held.pop(entry.entry_id, None)
        if not held:
            del self._ids[keys]
        if not self._ids and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def held(self) -> dict[Keys, list[bytes]]:
        """What is held now, by stream."""
        return {keys: list(ids) for keys, ids in self._ids.items()}

    def _tick(self) -> None:
        self._timer = None
        if not self._ids:
            return
        beat = asyncio.get_running_loop().create_task(self._heartbeat(self.held))
        self._beats.add(beat)
        beat.add_done_callback(self._beats.discard)
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)

    async def _heartbeat(self, held: dict[Keys, list[bytes]]) -> None:
        for keys, ids in held.items():
            try:
                await self._queue.heartbeat(keys, self._consumer, ids)
            except RedisError as exc:
                log.warning("%s: heartbeat failed: %s", self._consumer, exc)


class Worker:
    """One consumer of one partition's group. ``step()`` is a single pass; ``run()`` loops
    it until stopped."""

    def __init__(
        self,
        *,
        partition: Keys,
        queue: JobQueue,
        results: ResultStore,
        models: ModelRegistry,
        batchers: Batchers,
        metrics: Metrics,
        consumer: str,
        batch_size: int,
        block_ms: int,
        visibility_timeout: float,
        job_timeout: float = 0.0,
        completions: Completions | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.partition = partition
        self._queue = queue
        self._results = results
        self._models = models
        self._batchers = batchers
        self._metrics = metrics
        self.consumer = consumer
        self._visibility_ms = int(visibility_timeout * 1000)
        self._job_timeout = job_timeout
        self._completions = completions
        self._tracing = tracing
        self._reader = queue.reader(partition, consumer, batch_size, block_ms, self._visibility_ms)
        self._held = Held(queue, consumer, self._visibility_ms / 3000)
        self._stopping = asyncio.Event()
        self._outage = False  # Redis is away (logged once)
        self._gone = 0  # steps in a row that found a stream or group missing

    async def step(self) -> int:
        """Reads the next entries (see `service.jobs.reads`) and runs them, a batch per stream
        they came from; answers how many. Every entry read is kept claimed (heartbeat)
        from the read until it is finished or handed back, also while it waits for the
        batches read with it to run first."""
        batches = await self._reader.next()
        for keys, entries in batches:
            self._held.hold(keys, entries)
        try:
            for done, (keys, entries) in enumerate(batches):
                try:
                    await self.process(entries, keys)
                except ShuttingDown:
                    # Those not started yet go back to the queue with the one that ran.
                    for later_keys, later in batches[done + 1 :]:
                        await self._hand_back(later_keys, later, later)
                    raise
        finally:
            for keys, entries in batches:
                self._held.release(keys, entries)
        return sum(len(entries) for _, entries in batches)

    async def process(self, entries: list[Entry], keys: Keys | None = None) -> None:
        """Marks the batch processing (one script call), runs what may run, then writes the
        final records and acks every entry of the batch (one more call). ``keys``: those
        of the stream the entries came from (the partition's normal one if not given)."""
        partition = keys or self.partition
        prior = await self._results.mark_processing(
            partition, [(e.prediction_id, e.entry_id) for e in entries], time.time()
        )
        runnable = [e for e, status in zip(entries, prior, strict=True) if status in RUNNABLE]
        report_given_up(self.consumer, self._metrics, entries, prior)
        # Jobs already final (a redelivery), dead-lettered or expired are acked, not run.
        await self._run(partition, runnable, entries)

    async def run_started(self, partition: Keys, entries: list[Entry]) -> None:
        """Runs a batch of ``partition`` that submit.lua started already (the direct lane):
        no mark call."""
        await self._run(partition, entries, entries)

    async def _run(self, partition: Keys, runnable: list[Entry], batch: list[Entry]) -> None:
        if self._tracing is not None:
            self._tracing.jobs_started(runnable, time.time())
        self._held.hold(partition, batch)  # the lane's batches (a read's are held already)
        try:
            outcomes = await self._predict(runnable)
        except ShuttingDown:
            # The grace period ends before this batch does: its jobs go back on the queue
            # for another replica (at once, not after the visibility timeout), and the
            # model call still under way is abandoned, its result never written.
            await self._hand_back(partition, runnable, batch)
            raise
        finally:
            self._held.release(partition, batch)
        finished = [(e, o) for e, o in zip(runnable, outcomes, strict=True) if not o.lost]
        if len(finished) < len(runnable):
            # Their process died running them alone: they stay pending here, and are read
            # again (a delivery each) at once; past MAX_DELIVERIES they are dead-lettered.
            lost = {e.entry_id for e, o in zip(runnable, outcomes, strict=True) if o.lost}
            batch = [e for e in batch if e.entry_id not in lost]
            log.warning(
                "%s: %d jobs lost their model process; reading them again", self.consumer, len(lost)
            )
            self._reader.restart()
        await self._store(partition, finished, batch)
        report(self.consumer, self._metrics, [e for e, _ in finished], [o for _, o in finished])

    async def _hand_back(self, partition: Keys, runnable: list[Entry], batch: list[Entry]) -> None:
        handed = await self._queue.hand_back(partition, self.consumer, runnable)
        log.warning(
            "%s: stopping; handed %d unfinished jobs back to the queue", self.consumer, handed
        )
        others = [e for e in batch if e not in runnable]
        if others:  # already final, expired or dead-lettered: acked as usual
            await self._store(partition, [], others)

    async def _store(
        self, partition: Keys, finished: list[tuple[Entry, Outcome]], batch: list[Entry]
    ) -> None:
        """Writes the outcomes and acks. If Redis is away, keeps retrying for a while: the
        results are in hand, and running the jobs again later would cost a model call each.
        Past half the visibility timeout it gives up; the entries stay pending and are
        reclaimed (and run again) by whoever gets them.
        """
        give_up = time.monotonic() + self._visibility_ms / 2000
        backoff = 0.05
        while True:
            try:
                local = self._completions
                wanted = [local.waited_for(e.prediction_id) for e, _ in finished] if local else []
                records = await self._results.finish_and_ack(
                    partition, finished, batch, time.time(), wanted
                )
                if local is not None and any(wanted):
                    for record in records:
                        if record is not None:
                            local.ended(record)
                return
            except REDIS_FAILURES as exc:
                # Unreachable, or refusing writes for now (out of memory on Redis 6.2, a
                # read-only replica mid-failover): keep the results in hand for a while.
                if unavailable(exc) is None or time.monotonic() + backoff > give_up:
                    raise
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def _predict(self, entries: list[Entry]) -> list[Outcome]:
        """Outcomes in entry order; entries are grouped per model, one batch call per model."""
        outcomes: list[Outcome] = [Outcome(ok=False)] * len(entries)
        groups: dict[str, tuple[list[int], list[Any]]] = {}
        for i, entry in enumerate(entries):
            try:
                model = self._models.get(entry.model)
                value = model.validate(orjson.loads(entry.input_json))
            except (NotFound, InvalidInput) as exc:
                outcomes[i] = Outcome(ok=False, error=exc.message)
                continue
            except orjson.JSONDecodeError as exc:
                outcomes[i] = Outcome(ok=False, error=f"Invalid input: {exc}")
                continue
            slots, values = groups.setdefault(entry.model, ([], []))
            slots.append(i)
            values.append(value)
        for name, (slots, values) in groups.items():
            now = time.time()
            # Waited for until JOB_TIMEOUT_SECONDS from the oldest one's submission, and no
            # longer than every job's Cancel-After, when each has one.
            limit = due = 0.0
            if self._job_timeout > 0:
                created = min(entries[i].created_at or now for i in slots)
                limit = max(created + self._job_timeout - now, 0.001)
            cancels = [entries[i].cancel_at for i in slots]
            if all(cancels):
                due = max(max(cancels) - now, 0.001)
            traced = self._tracing
            span = traced.batch(name, [entries[i] for i in slots]) if traced else _NO_SPAN
            try:
                with span:
                    if not (limit or due):
                        results = await self._batchers[name].run(values)
                    else:
                        wait = min(limit or due, due or limit)
                        results = await asyncio.wait_for(self._batchers[name].run(values), wait)
            except TimeoutError:
                # No one waits for the call any more: a process model's is cut short, a
                # thread model's runs on (a thread cannot be stopped), its results dropped.
                if due and (not limit or due <= limit):
                    results = [_CANCELED] * len(values)
                else:
                    error = f"timed out: not finished within {self._job_timeout:g} s of submission"
                    results = [Outcome(ok=False, error=error)] * len(values)
            now = time.time()
            for i, outcome in zip(slots, results, strict=True):
                cancel_at = entries[i].cancel_at
                outcomes[i] = _CANCELED if cancel_at and now >= cancel_at else outcome
        return outcomes

    async def run(self) -> None:
        """Loops ``step()`` until ``stop()``. While Redis is unreachable or refuses writes
        (out of memory, read-only, failing over) it retries with backoff, logged once."""
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                await self.step()
            except ShuttingDown:
                continue  # the batch went back on the queue (see _run)
            except Exception as exc:
                if not await self._recover(exc):
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)
                continue
            if self._outage:
                log.info("%s: Redis is back", self.consumer)
            self._outage, self._gone, backoff = False, 0, 0.1

    async def _recover(self, exc: Exception) -> bool:
        """Logs why a step failed and readies the next one; True when it may run at once."""
        if isinstance(exc, ModelUnavailable):
            # The batch's entries stay pending here: read them again (a delivery each)
            # once the model can run again.
            log.warning("%s: %s", self.consumer, exc.message)
            self._reader.restart()
            return False
        if not isinstance(exc, REDIS_FAILURES):
            log.exception("%s: unexpected error in worker step", self.consumer)
            return False
        reason = unavailable(exc)
        if reason is not None:
            if not self._outage:
                log.warning("%s: %s (%s); retrying with backoff", self.consumer, reason, exc)
            self._outage = True
            # A read whose answer was lost (Redis went away, or failed over, as it
            # answered) left entries pending on this consumer: read them first.
            self._reader.restart()
            return False
        if not stream_gone(exc):
            log.exception("%s: Redis refused a command", self.consumer)
            return False
        self._gone += 1
        log.warning("%s: %s; making sure the streams and groups exist", self.consumer, _gone(exc))
        try:
            await self._queue.ensure_group()
        except REDIS_FAILURES as again:
            log.warning("%s: cannot recreate the streams and groups yet: %s", self.consumer, again)
            return False
        self._reader.restart()
        return self._gone == 1  # at once the first time; with backoff while it goes on

    async def _sleep(self, seconds: float) -> None:
        # Waits out a backoff, but wakes at once when asked to stop.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def stop(self) -> None:
        """Asks the loop to end after the current step."""
        self._stopping.set()
