"""A streaming model with a fixed pace, for measuring the streaming path (scripts/bench
--stream): no work, only waits.

    MODEL=examples.ticker:ticks
    curl -N -H 'Accept: text/event-stream' -d '{"input": {"n": 5, "every": 0.2}}' \
        localhost:8080/predict
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any


def ticks(value: dict[str, Any]) -> Iterator[dict[str, int]]:
    """Yields ``{"i": 0}``, ``{"i": 1}``, ... ``value["n"]`` chunks (default 50), each
    after ``value["every"]`` seconds (default 0.005)."""
    count = int(value.get("n", 50))
    every = float(value.get("every", 0.005))
    pause = threading.Event()
    for i in range(count):
        pause.wait(every)
        yield {"i": i}
