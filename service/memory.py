"""After start-up: give freed memory back to the OS, and keep long-lived objects out of GC."""

from __future__ import annotations

import ctypes
import gc
import logging

log = logging.getLogger(__name__)


def release_freed_memory() -> None:
    """Collects garbage, then asks glibc to return free heap pages (a no-op elsewhere).

    Start-up builds large short-lived objects (the OpenAPI validator alone is ~40 MB);
    without this an idle replica keeps that memory resident.
    """
    gc.collect()
    # What start-up built lives as long as the process: keep it out of every later
    # collection, so a full collection does not stall the event loop scanning it.
    gc.freeze()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        log.debug("malloc_trim is not available here")
