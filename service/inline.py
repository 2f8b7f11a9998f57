"""When a model is so fast that handing it to a thread costs more than calling it.

A thread hop (queue the call, wake a thread, switch the GIL, wake the event loop) costs
tens of microseconds, more than a no-op or a small scikit-learn call takes. A model that
declares its calls cheap and bounded (`Model.inline`), and whose batch calls keep
finishing within INLINE_MAX_MS, is therefore called on the event loop itself; one inline
call slower than that sends it back to threads (and is logged as a warning: it held up
the whole replica), and the fast streak it then needs before it is trusted again doubles
each time. A model that did not declare itself cheap always runs in threads: a call
whose duration depends on its input could otherwise stall every request, heartbeat and
notification of the replica for as long as it runs.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

FIRST_STREAK = 50
LONGEST_STREAK = 1 << 20


class InlinePolicy:
    """Per model: whether its next batch runs on the event loop."""

    def __init__(self, model_name: str, limit_seconds: float) -> None:
        self._name = model_name
        self._limit = limit_seconds
        self._needed = FIRST_STREAK
        self._streak = 0
        self.inline = False

    def observe(self, call_seconds: float) -> None:
        """Records how long one batch call took (the call alone, not the hop)."""
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
