"""The queue worker: read a batch, mark it processing, predict, write results and ack."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from service.errors import ModelUnavailable, ShuttingDown
from service.job import RUNNABLE, Entry, Outcome
from service.jobs.consumer import Consumer
from service.jobs.reports import report, report_given_up
from service.jobs.runner import JobRunner
from service.jobs.store import ResultStore
from service.jobs.waiting import Waiters
from service.observability.metrics import Metrics
from service.redis.connection import REDIS_FAILURES, stream_gone, unavailable
from service.redis.keys import Keys

log = logging.getLogger(__name__)

_MAX_BACKOFF_SECONDS = 5.0


def _gone(exc: BaseException) -> str:
    """What a read that failed for a missing stream or group (`stream_gone`) means."""
    text = str(exc)
    if "instance state changed" in text:
        return "the Redis node it read from is no longer a primary (a failover)"
    if "NOGROUP" in text:
        return "a stream or its consumer group is missing (deleted, or lost in a failover)"
    return "a stream it read was deleted"


class StreamSlots:
    """How many queued jobs of streaming models a replica runs at once (``size``,
    STREAM_THREADS). Its workers run such jobs beside their reads (a stream may last
    minutes: a worker that waited for it would leave the jobs queued behind it waiting
    too); a read takes no more entries than there are free slots, and each streaming job
    read waits for its slot before it is marked running (two workers' reads may have
    counted the same free slot)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.running = 0
        self._freed = asyncio.Event()

    def free(self) -> int:
        return max(0, self.size - self.running)

    async def take(self, stopping: asyncio.Event) -> bool:
        """Takes a slot once one is free; False (none taken) if ``stopping`` is set first
        (checked every half second)."""
        while not self.free():
            if stopping.is_set():
                return False
            self._freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), 0.5)
        self.running += 1
        return True

    def give(self) -> None:
        self.running -= 1
        self._freed.set()

    async def wait(self, stopping: asyncio.Event) -> None:
        """Until a slot is free or ``stopping`` is set (checked every half second)."""
        while not self.free() and not stopping.is_set():
            self._freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), 0.5)


class Worker:
    """Runs what its ``consumer`` reads: marks each batch (``store``), predicts it
    (``runner``) and finishes it (the consumer), counting and logging each job
    (``metrics``) and handing the records it ends to this replica's waiters
    (``waiters``). ``step()`` is a single pass; ``run()`` loops it until stopped."""

    def __init__(
        self,
        consumer: Consumer,
        store: ResultStore,
        runner: JobRunner,
        metrics: Metrics,
        waiters: Waiters | None = None,
        slots: StreamSlots | None = None,
    ) -> None:
        self.consumer = consumer
        self._store = store
        self._runner = runner
        self._metrics = metrics
        self._waiters = waiters
        # Jobs of streaming models run beside the reads, in these slots (when given).
        self._slots = slots if runner.streaming else None
        self._alone: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._outage = False  # Redis is away (logged once)
        self._gone = 0  # steps in a row that found a stream or group missing

    @property
    def name(self) -> str:
        return self.consumer.name

    async def step(self) -> int:
        """Reads the next entries and runs them, a batch per stream they came from; answers
        how many. Every entry read is kept claimed from the read until it is finished or
        handed back, also while it waits for the batches read with it to run first."""
        most = 0
        if self._slots is not None:
            await self._slots.wait(self._stopping)
            if self._stopping.is_set():
                return 0
            most = self._slots.free()
        batches = await self.consumer.next(most)
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
                self.consumer.release(keys, entries)
        return sum(len(entries) for _, entries in batches)

    async def process(self, entries: list[Entry], keys: Keys | None = None) -> None:
        """Marks the batch (one script call), runs what may run, then writes the final
        records and acks every entry of the batch (one more call). ``keys``: those of the
        stream the entries came from (the partition's normal one if not given)."""
        keys = keys or self.consumer.partition
        alone = await self._take_slots(keys, entries)
        prior = await self._store.mark(
            keys, [(e.prediction_id, e.entry_id) for e in entries], time.time()
        )
        runnable = [e for e, status in zip(entries, prior, strict=True) if status in RUNNABLE]
        report_given_up(self.name, self._metrics, entries, prior, keys.tenant)
        if len(runnable) < len(entries):
            await self._runner.given_up(entries, prior)
        if alone:
            for entry in entries:
                if entry.entry_id not in alone:
                    continue
                if entry in runnable:
                    self._run_alone(keys, entry)
                else:  # not to run (final, dead-lettered, expired): acked below
                    alone.discard(entry.entry_id)
                    self._slots.give()  # type: ignore[union-attr]
            runnable = [e for e in runnable if e.entry_id not in alone]
            entries = [e for e in entries if e.entry_id not in alone]
            if not entries:
                return
        # Jobs already final (a redelivery), dead-lettered or expired are acked, not run.
        await self._run(keys, runnable, entries)

    async def _take_slots(self, keys: Keys, entries: list[Entry]) -> set[bytes]:
        """A slot for each entry of a streaming model, waiting for them (see StreamSlots);
        answers those entries. A replica that stops meanwhile hands the batch back."""
        if self._slots is None:
            return set()
        alone = {e.entry_id for e in entries if self._runner.streams(e.model)}
        for taken in range(len(alone)):
            if not await self._slots.take(self._stopping):
                for _ in range(taken):
                    self._slots.give()
                await self._hand_back(keys, entries, entries)
                raise ShuttingDown("The replica stops: the batch went back on the queue.")
        return alone

    def _run_alone(self, keys: Keys, entry: Entry) -> None:
        """Starts a job of a streaming model in a task of its own, in the slot it took: it
        ends (its record written, its entry acked) when its stream does, whatever runs
        beside it."""
        assert self._slots is not None
        self.consumer.hold(keys, [entry])  # past the read's release, until its run ends
        task = asyncio.create_task(self._alone_run(keys, entry))
        self._alone.add(task)
        task.add_done_callback(self._alone.discard)

    async def _alone_run(self, keys: Keys, entry: Entry) -> None:
        assert self._slots is not None
        try:
            await self._run(keys, [entry], [entry])
        except ShuttingDown:
            pass  # handed back to the queue (see _run)
        except Exception as exc:
            # Its outcome could not be written (Redis away too long): the entry stays
            # pending, to be read again by this consumer, or reclaimed.
            log.warning("%s: job %s did not end: %s", self.name, entry.prediction_id, exc)
            self.consumer.restart()
        finally:
            self.consumer.release(keys, [entry])
            self._slots.give()

    async def run_started(self, keys: Keys, entries: list[Entry]) -> None:
        """Runs a batch that submit.lua started already (the direct lane): no mark call."""
        await self._run(keys, entries, entries)

    async def _run(self, keys: Keys, runnable: list[Entry], batch: list[Entry]) -> None:
        self.consumer.hold(keys, batch)  # the lane's batches (a read's are held already)
        started = time.time()
        try:
            outcomes = await self._runner.predict(runnable, keys)
        except ShuttingDown:
            # The grace period ends before this batch does: its jobs go back on the queue
            # for another replica (at once, not after the visibility timeout), and the
            # model call still under way is abandoned, its result never written.
            await self._hand_back(keys, runnable, batch)
            raise
        finally:
            self.consumer.release(keys, batch)
        finished = [(e, o) for e, o in zip(runnable, outcomes, strict=True) if not o.lost]
        if len(finished) < len(runnable):
            # Their process died running them alone: they stay pending here, and are read
            # again (a delivery each) at once; past MAX_DELIVERIES they are dead-lettered.
            lost = {e.entry_id for e, o in zip(runnable, outcomes, strict=True) if o.lost}
            batch = [e for e in batch if e.entry_id not in lost]
            log.warning(
                "%s: %d jobs lost their model process; reading them again", self.name, len(lost)
            )
            self.consumer.restart()
        await self._finish(keys, finished, batch)
        ended = [e for e, _ in finished]
        report(self.name, self._metrics, ended, [o for _, o in finished], keys.tenant, started)

    async def _hand_back(self, keys: Keys, runnable: list[Entry], batch: list[Entry]) -> None:
        handed = await self.consumer.hand_back(keys, runnable)
        log.warning("%s: stopping; handed %d unfinished jobs back to the queue", self.name, handed)
        others = [e for e in batch if e not in runnable]
        if others:  # already final, expired or dead-lettered: acked as usual
            await self._finish(keys, [], others)

    async def _finish(
        self, keys: Keys, finished: list[tuple[Entry, Outcome]], batch: list[Entry]
    ) -> None:
        """Writes the outcomes and acks. If Redis is away, keeps retrying for a while: the
        results are in hand, and running the jobs again later would cost a model call each.
        Past half the visibility timeout it gives up; the entries stay pending and are
        reclaimed (and run again) by whoever gets them.
        """
        give_up = time.monotonic() + self.consumer.settings.visibility_ms / 2000
        backoff = 0.05
        local = self._waiters
        while True:
            try:
                wanted = [local.waited_for(e.prediction_id) for e, _ in finished] if local else []
                records = await self.consumer.finish(keys, finished, batch, time.time(), wanted)
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
                log.info("%s: Redis is back", self.name)
            self._outage, self._gone, backoff = False, 0, 0.1
        # Streaming jobs still running end (or, past the grace period, go back on the
        # queue) before the worker does.
        await asyncio.gather(*self._alone, return_exceptions=True)

    async def _recover(self, exc: Exception) -> bool:
        """Logs why a step failed and readies the next one; True when it may run at once."""
        if isinstance(exc, ModelUnavailable):
            # The batch's entries stay pending here: read them again (a delivery each)
            # once the model can run again.
            log.warning("%s: %s", self.name, exc.message)
            self.consumer.restart()
            return False
        if not isinstance(exc, REDIS_FAILURES):
            log.exception("%s: unexpected error in worker step", self.name)
            return False
        reason = unavailable(exc)
        if reason is not None:
            if not self._outage:
                log.warning("%s: %s (%s); retrying with backoff", self.name, reason, exc)
            self._outage = True
            # A read whose answer was lost (Redis went away, or failed over, as it
            # answered) left entries pending on this consumer: read them first.
            self.consumer.restart()
            return False
        if not stream_gone(exc):
            log.exception("%s: Redis refused a command", self.name)
            return False
        self._gone += 1
        log.warning("%s: %s; making sure the streams and groups exist", self.name, _gone(exc))
        try:
            await self.consumer.ensure_streams()
        except REDIS_FAILURES as again:
            log.warning("%s: cannot recreate the streams and groups yet: %s", self.name, again)
            return False
        self.consumer.restart()
        return self._gone == 1  # at once the first time; with backoff while it goes on

    async def _sleep(self, seconds: float) -> None:
        # Waits out a backoff, but wakes at once when asked to stop.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def stop(self) -> None:
        """Asks the loop to end after the current step."""
        self._stopping.set()
