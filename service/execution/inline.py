"""When a model is so fast that handing it to a thread costs more than calling it.

A thread hop (queue the call, wake a thread, switch the GIL, wake the event loop) costs
tens of microseconds, more than a no-op or a small scikit-learn call takes. A model that
declares its calls cheap and bounded (`Model.inline`), and whose batch calls keep
finishing within INLINE_MAX_MS, is therefore called on the event loop itself; one inline
call slower than that sends it back to threads (and is logged as a warning: it held up
the whole replica), and the fast streak it then needs before it is trusted again doubles
each time. A call is judged by its own time (`own_time`): its CPU time, or its wall time
if it blocked. While the thread stood preempted (another process had the core, or the
container's CPU quota throttled it) the replica was held up all the same, but not by the
model: moving the model to threads would not have helped, only cost every later call the
hop. A model that did not declare itself cheap always runs in threads: a call
whose duration depends on its input could otherwise stall every request, heartbeat and
notification of the replica for as long as it runs.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

#: Linux: CPU time and context switches of the calling thread alone.
_THREAD = getattr(resource, "RUSAGE_THREAD", None)

T = TypeVar("T")

FIRST_STREAK = 50
LONGEST_STREAK = 1 << 20


def usage() -> tuple[float, int]:
    """This thread's CPU seconds so far and how often it blocked (voluntary context
    switches); (0, 0) where the system does not count them per thread."""
    if _THREAD is None:
        return 0.0, 0
    now = resource.getrusage(_THREAD)
    return now.ru_utime + now.ru_stime, now.ru_nvcsw


def own_time(wall: float, before: tuple[float, int], after: tuple[float, int]) -> float:
    """The part of a call's ``wall`` seconds that was its own doing, from `usage()` taken
    before and after it in its thread: all of them if it blocked (slept, waited on I/O, a
    lock or another thread), else its CPU time."""
    if _THREAD is None or after[1] > before[1]:
        return wall
    return min(wall, after[0] - before[0])


def timed(fn: Callable[[Any], T], arg: Any) -> tuple[T, float, float]:
    """``fn(arg)``, its wall seconds and its own seconds (`own_time`), in this thread."""
    began, before = time.perf_counter(), usage()
    result = fn(arg)
    wall = time.perf_counter() - began
    return result, wall, own_time(wall, before, usage())


class InlinePolicy:
    """Per model: whether its next batch runs on the event loop."""

    def __init__(self, model_name: str, limit_seconds: float) -> None:
        self._name = model_name
        self._limit = limit_seconds
        self._needed = FIRST_STREAK
        self._streak = 0
        self.inline = False

    def observe(self, call_seconds: float) -> None:
        """Records how long one batch call took by its own doing (`own_time`; the call
        alone, not the hop)."""
        if self._limit <= 0:
            return
        if call_seconds <= self._limit:
            if not self.inline:
                self._streak += 1
                if self._streak >= self._needed:
                    self.inline = True
                    log.info("model %s is fast: calling it on the event loop", self._name)
            return
        self._streak = 0
        if self.inline:
            self.inline = False
            self._needed = min(self._needed * 2, LONGEST_STREAK)
            log.warning(
                "model %s took %.2f ms on the event loop, holding up the replica: back to "
                "threads for %d fast calls (it declares its calls cheap: is that so?)",
                self._name,
                call_seconds * 1000,
                self._needed,
            )
