"""Choosing the event loop: uvloop when it is installed (measured faster), else asyncio's."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


def use_event_loop(choice: str = "auto") -> str:
    """Sets the loop policy for loops made from now on; answers which loop it chose."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            return "uvloop"
    return "asyncio"
