"""Where this replica is in its life: serving, or stopping (readiness turns false)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Lifecycle:
    stopping: bool = False
    #: Set while the replica is broken beyond what it can mend itself: liveness fails.
    fault: str | None = None


@dataclass
class SyncGate:
    """How many sync predictions are running (bounded by MAX_SYNC_IN_FLIGHT)."""

    in_flight: int = 0
