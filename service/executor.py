"""Running model code off the event loop, in a thread pool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Executor:
    """A thread pool for blocking model calls; numpy-style libraries release the GIL."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="model")

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        # Threads stuck in a model call cannot be interrupted; do not wait for them.
        self._pool.shutdown(wait=False, cancel_futures=True)
