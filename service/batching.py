"""Dynamic batching: concurrent calls to one model are gathered into one batch call."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .executor import Executor
from .models import Model, Outcome

log = logging.getLogger(__name__)


class Batcher:
    """Gathers the inputs of concurrent callers of one model into batches of at most
    ``max_size``, waiting at most ``max_delay`` seconds after the first input of a batch.

    A full batch is sent at once; a partial one when the delay runs out (with a delay of 0,
    at the next turn of the event loop, which still gathers what arrived in the same turn).
    Several batches may run at once, as many as the executor allows. Each caller gets the
    outcomes of its own inputs, in order.
    """

    def __init__(self, model: Model, executor: Executor, max_size: int, max_delay: float) -> None:
        self.model = model
        self._executor = executor
        self.max_size = max_size
        self.max_delay = max_delay
        self._waiting: list[tuple[Any, asyncio.Future[Outcome]]] = []
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def run(self, values: list[Any]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Outcome]] = [loop.create_future() for _ in values]
        for value, future in zip(values, futures, strict=True):
            self._add(loop, value, future)
        return [await future for future in futures]

    async def run_one(self, value: Any) -> Outcome:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._add(loop, value, future)
        return await future

    def _add(
        self, loop: asyncio.AbstractEventLoop, value: Any, future: asyncio.Future[Outcome]
    ) -> None:
        self._waiting.append((value, future))
        if len(self._waiting) >= self.max_size:
            self._flush()
        elif self._timer is None:
            if self.max_delay > 0:
                self._timer = loop.call_later(self.max_delay, self._flush)
            else:
                self._timer = loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            batch, self._waiting = self._waiting[: self.max_size], self._waiting[self.max_size :]
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run_batch(self, batch: list[tuple[Any, asyncio.Future[Outcome]]]) -> None:
        try:
            outcomes = await self._executor.run_batch(self.model, [value for value, _ in batch])
        except BaseException as exc:  # the executor failed (not the model): fail the callers
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():  # a caller that gave up leaves a cancelled future
                future.set_result(outcome)


class Batchers:
    """One batcher per model."""

    def __init__(
        self, models: dict[str, Model], executor: Executor, max_size: int, max_delay: float
    ) -> None:
        self._batchers = {
            name: Batcher(model, executor, max_size, max_delay) for name, model in models.items()
        }

    def __getitem__(self, name: str) -> Batcher:
        return self._batchers[name]
