"""Coalescing: the writes of concurrent callers share one Redis round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from service.execution.loop import BoundLoop

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Calls ``flush(items)`` with everything callers added while the previous flush was
    under way (or during the current turn of the event loop), one flush at a time; each
    caller gets the result at its item's position in what ``flush`` returns.

    Under light load each item is flushed alone at the next loop turn; under heavy load the
    batches grow by themselves, so round trips stay few. A flush that raises fails every
    caller whose item it carried; so does one that takes longer than ``within`` seconds
    (0: no bound), with ``too_slow()``: the callers are answered, and the next flush goes
    out.

    With ``spacing``, flushes start at least that many seconds apart: an item added sooner
    after the last one waits for the rest of it (and shares the flush with whatever comes
    meanwhile); one added later goes at once. Under load that trades at most ``spacing``
    of delay for far fewer round trips; a lone caller never waits.
    """

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[list[R]]],
        within: float = 0.0,
        too_slow: Callable[[], Exception] | None = None,
        spacing: float = 0.0,
    ) -> None:
        self._flush = flush
        self._within = within
        self._too_slow = too_slow or TimeoutError
        self._spacing = spacing
        self._last = -spacing  # when the last flush started (loop time)
        self._items: list[T] = []
        self._futures: list[asyncio.Future[R]] = []
        self._task: asyncio.Task[None] | None = None
        self._loop = BoundLoop()

    def add(self, item: T) -> asyncio.Future[R]:
        """A future of ``item``'s result. (Not a coroutine: one layer fewer per request.)"""
        loop = self._loop()
        future: asyncio.Future[R] = loop.create_future()
        self._items.append(item)
        self._futures.append(future)
        if self._task is None:
            self._task = loop.create_task(self._drain())
        return future

    async def _drain(self) -> None:
        try:
            while self._items:
                if self._spacing:
                    loop = asyncio.get_running_loop()
                    early = self._last + self._spacing - loop.time()
                    if early > 0:
                        await asyncio.sleep(early)
                    self._last = loop.time()
                items, futures = self._items, self._futures
                self._items, self._futures = [], []
                try:
                    if self._within:
                        async with asyncio.timeout(self._within):
                            results = await self._flush(items)
                    else:
                        results = await self._flush(items)
                except TimeoutError:
                    for future in futures:
                        if not future.done():
                            future.set_exception(self._too_slow())
                except Exception as exc:
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for future, result in zip(futures, results, strict=True):
                        if not future.done():
                            future.set_result(result)
        finally:
            self._task = None
