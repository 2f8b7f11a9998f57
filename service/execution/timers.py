"""Giving up on futures after a timeout, with one timer for many of them.

The sync path gives every request the same timeout, and waiters mostly ask for the same
wait, so deadlines mostly arrive in order: a queue of (deadline, future) and one timer
armed for the earliest deadline replace a timer per request (creating and cancelling a
timer per request cost about 3% of sync throughput). A deadline out of order goes to a
small heap beside the queue.

Settled futures are dropped from the head of the queue as new ones come, and the whole
of both is compacted whenever it has grown to twice what was pending at the last
compaction: one slow request at the head can no longer keep every later (settled) one
in memory. Memory stays proportional to the futures still pending; the cost per watch
stays constant on average.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

#: Compactions start past this many entries.
_FIRST_COMPACTION = 1024


def fail(future: asyncio.Future[Any]) -> None:
    """Fails a pending future with TimeoutError."""
    if not future.done():
        future.set_exception(TimeoutError())


class Deadlines:
    """Settles each watched future that is still pending at its deadline with ``expire``
    (by default: fails it with TimeoutError)."""

    def __init__(self, expire: Callable[[asyncio.Future[Any]], None] = fail) -> None:
        self._expire = expire
        self._queue: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._late: list[tuple[float, int, asyncio.Future[Any]]] = []  # a heap
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._compact_past = _FIRST_COMPACTION

    def __len__(self) -> int:
        """Entries held (pending futures, and settled ones not yet dropped)."""
        return len(self._queue) + len(self._late)

    def expire_after(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], seconds: float
    ) -> None:
        """Settles ``future`` with ``expire`` if it is still pending ``seconds`` from now."""
        queue = self._queue
        while queue and queue[0][1].done():  # settled in time: forget them
            queue.popleft()
        if len(queue) + len(self._late) > self._compact_past:
            self._compact()
        deadline = loop.time() + seconds
        if queue and deadline < queue[-1][0]:  # out of order (another timeout)
            heapq.heappush(self._late, (deadline, next(self._order), future))
        else:
            queue.append((deadline, future))
        if deadline < self._timer_at:
            self._arm(loop, deadline)

    def _compact(self) -> None:
        self._queue = deque(item for item in self._queue if not item[1].done())
        self._late = [item for item in self._late if not item[2].done()]
        heapq.heapify(self._late)
        self._compact_past = max(_FIRST_COMPACTION, 2 * len(self))

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._sweep, loop)
        self._timer_at = when

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer, self._timer_at = None, float("inf")
        queue, late, now = self._queue, self._late, loop.time()
        while queue and (queue[0][1].done() or queue[0][0] <= now):
            self._expire(queue.popleft()[1])
        while late and (late[0][2].done() or late[0][0] <= now):
            self._expire(heapq.heappop(late)[2])
        nearest = min(queue[0][0] if queue else float("inf"), late[0][0] if late else float("inf"))
        if nearest != float("inf"):
            self._arm(loop, nearest)
