"""Dynamic batching: concurrent calls to one model are gathered into one batch call."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from service.execution.executor import Executor
from service.execution.inline import InlinePolicy, timed
from service.execution.loop import BoundLoop
from service.execution.processes import Call
from service.execution.streams import Chunks
from service.execution.timers import Deadlines
from service.job import Outcome
from service.models import Model
from service.observability.metrics import Metrics

log = logging.getLogger(__name__)


class Batcher:
    """Gathers the inputs of concurrent callers of one model into batches.

    A batch starts when it holds ``max_size`` inputs; at the next turn of the event loop
    once it holds as many as the previous batch did (so a lone caller never waits, and a
    steady crowd of N callers is batched about N at a time); or when its first input has
    waited ``max_delay`` seconds. Several batches may run at once, as many as the executor
    has threads, or at most ``concurrency`` (0: no limit of its own); past it, inputs wait
    and the next batch starts when one ends, holding what came meanwhile. Each caller gets
    the outcomes of its own inputs, in order.
    """

    def __init__(
        self,
        model: Model,
        executor: Executor,
        max_size: int,
        max_delay: float,
        metrics: Metrics | None = None,
        inline_limit: float = 0.0,
        concurrency: int = 0,
    ) -> None:
        self.model = model
        self.concurrency = concurrency
        # Only thread models that declare their calls cheap: a process model's call is never
        # run here, and neither is a model whose cost may depend on its input.
        cheap = model.execution == "thread" and model.inline
        self._inline = InlinePolicy(model.name, inline_limit if cheap else 0)
        self._metrics = metrics
        self._executor = executor
        self.max_size = max_size
        self.max_delay = max_delay
        self._last_size = 1
        self._waiting: list[tuple[Any, asyncio.Future[Outcome]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: set[asyncio.Future[Outcome]] = set()
        self._deadlines = Deadlines()
        self._loop = BoundLoop()

    async def run(self, values: list[Any]) -> list[Outcome]:
        loop = self._loop()
        futures: list[asyncio.Future[Outcome]] = [loop.create_future() for _ in values]
        for value, future in zip(values, futures, strict=True):
            self._add(loop, value, future)
        try:
            return [await future for future in futures]
        except BaseException:
            # The caller gave up (a deadline), or one outcome failed (the replica stops):
            # the others are not wanted any more, and their failures are seen here (not
            # logged as never retrieved).
            for future in futures:
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()
            raise

    def run_one(self, value: Any, give_up_after: float = 0.0) -> asyncio.Future[Outcome]:
        """A future of the outcome of one input; TimeoutError after ``give_up_after`` seconds
        (0: none), when the caller stops waiting (the batch itself cannot be interrupted).
        (A plain function that answers a future, not a coroutine: a coroutine layer on the
        sync path costs each request on the call and again when it resumes.)
        """
        loop = self._loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._add(loop, value, future)
        if give_up_after > 0:
            self._deadlines.expire_after(loop, future, give_up_after)
        return future

    def stream(self, value: Any) -> Chunks:
        """Starts a streaming call for one input (a model that streams: never batched, see
        `service.execution.streams`); answers the channel of its chunks."""
        return self._executor.stream(self.model, value)

    def started(self, future: asyncio.Future[Outcome]) -> bool:
        """Whether the batch of this future (from `run_one`) is running now."""
        return future in self._running

    def _add(
        self, loop: asyncio.AbstractEventLoop, value: Any, future: asyncio.Future[Outcome]
    ) -> None:
        self._waiting.append((value, future))
        waiting = len(self._waiting)
        if waiting >= self.max_size:
            self._flush()
        elif self._soon is None and (waiting >= self._last_size or self.max_delay <= 0):
            self._soon = loop.call_soon(self._flush)
        elif self._timer is None and self._soon is None:
            self._timer = loop.call_later(self.max_delay, self._flush)

    def _flush(self) -> None:
        for handle in (self._timer, self._soon):
            if handle is not None:
                handle.cancel()
        self._timer = self._soon = None
        while self._waiting:
            if self.concurrency and len(self._tasks) >= self.concurrency:
                return  # the next batch starts when a running one ends (_batch_done)
            batch, self._waiting = self._waiting[: self.max_size], self._waiting[self.max_size :]
            self._last_size = len(batch)
            # A caller that gave up before its batch started (its deadline passed) is left
            # out: its input never reaches the model.
            batch = [item for item in batch if not item[1].done()]
            if not batch:
                continue
            if self._inline.inline:
                self._run_inline(batch)
                continue
            task = self._loop().create_task(self._run_batch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self.concurrency and self._waiting:
            self._flush()

    def abandon(self, error: Exception) -> None:
        """Fails every caller still waiting, queued or running (the calls under way go on
        in their threads; their results are dropped)."""
        for _, future in self._waiting:
            if not future.done():
                future.set_exception(error)
        self._waiting = []
        for future in self._running:
            if not future.done():
                future.set_exception(error)

    async def _run_batch(self, batch: list[tuple[Any, asyncio.Future[Outcome]]]) -> None:
        began = time.perf_counter()
        futures = [future for _, future in batch]
        self._running.update(futures)
        call: Call | None = None
        if self.model.execution == "process":
            # A process call whose callers all gave up is cut short: its process is ended.
            call = process_call = Call()

            def unwanted(_: asyncio.Future[Outcome]) -> None:
                if all(f.cancelled() for f in futures):
                    self._executor.interrupt(process_call)

            for future in futures:
                future.add_done_callback(unwanted)
        try:
            outcomes, call_seconds = await self._executor.run_batch(
                self.model, [value for value, _ in batch], call
            )
        except BaseException as exc:  # the executor failed (not the model): fail the callers
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._running.difference_update(futures)
        self._inline.observe(call_seconds)
        self._settle(batch, outcomes, time.perf_counter() - began)

    def _run_inline(self, batch: list[tuple[Any, asyncio.Future[Outcome]]]) -> None:
        """Calls the model here, on the loop (run_batch turns model errors into outcomes)."""
        outcomes, seconds, own = timed(self.model.run_batch, [value for value, _ in batch])
        self._inline.observe(own)
        self._settle(batch, outcomes, seconds)

    def _settle(
        self,
        batch: list[tuple[Any, asyncio.Future[Outcome]]],
        outcomes: list[Outcome],
        seconds: float,
    ) -> None:
        if self._metrics is not None:
            self._metrics.observe_batch(self.model.name, len(batch), seconds)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():  # a caller that gave up leaves a cancelled future
                future.set_result(outcome)


class Batchers:
    """One batcher per model, with the replica's batch settings unless the model sets its
    own (`Model.max_batch_size`, `max_batch_delay_ms`, `concurrency`)."""

    def __init__(
        self,
        models: dict[str, Model],
        executor: Executor,
        max_size: int,
        max_delay: float,
        metrics: Metrics | None = None,
        inline_limit: float = 0.0,
    ) -> None:
        def delay(model: Model) -> float:
            own = model.max_batch_delay_ms
            return max_delay if own is None else own / 1000

        self._batchers = {
            name: Batcher(
                model,
                executor,
                model.max_batch_size or max_size,
                delay(model),
                metrics,
                inline_limit,
                model.concurrency or 0,
            )
            for name, model in models.items()
        }
        self._executor = executor

    def __getitem__(self, name: str) -> Batcher:
        return self._batchers[name]

    def abandon(self, error: Exception) -> None:
        """`Batcher.abandon` for every model; the streams under way are stopped, their
        readers told why."""
        for batcher in self._batchers.values():
            batcher.abandon(error)
        self._executor.abandon_streams(error)
