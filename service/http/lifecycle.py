"""Where this replica is in its life: serving, or stopping (readiness turns false)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from service.errors import Overloaded


@dataclass
class Lifecycle:
    stopping: bool = False
    #: Set while the replica is broken beyond what it can mend itself: liveness fails.
    fault: str | None = None
    #: When stopping: the monotonic time by which everything must be done (SIGTERM plus
    #: SHUTDOWN_GRACE_SECONDS). Every stage of the shutdown uses what is left of it.
    deadline: float | None = None
    #: Called once when stopping begins (the drains start at once, side by side).
    on_stop: list[Callable[[], None]] = field(default_factory=list)

    def begin_stopping(self, grace: float) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.deadline = time.monotonic() + grace
        for stop in self.on_stop:
            stop()

    def left(self, grace: float) -> float:
        """Seconds left of the shutdown (``grace`` when no deadline was set)."""
        if self.deadline is None:
            return grace
        return max(0.0, self.deadline - time.monotonic())


@dataclass
class SyncGate:
    """How many sync predictions are running (bounded by MAX_SYNC_IN_FLIGHT)."""

    in_flight: int = 0

    def enter(self, most: int) -> None:
        """Counts one more running; Overloaded (503) when ``most`` run already."""
        if self.in_flight >= most:
            raise Overloaded(f"{self.in_flight} predictions are running; try again shortly.")
        self.in_flight += 1
