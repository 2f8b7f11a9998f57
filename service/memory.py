"""Giving memory that start-up used and freed back to the operating system."""

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
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        log.debug("malloc_trim is not available here")
