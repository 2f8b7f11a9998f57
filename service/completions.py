"""Waiting for jobs to change without polling: every replica follows one pub/sub channel on
which the scripts that start or end jobs announce them, and wakes its local waiters.

A waiter on replica A is woken by a job that replica B finished. A waiter always re-reads
the record after it is woken (or its time is up), so a lost announcement (Redis restarting,
the listener reconnecting) costs at most the wait, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .keys import Keys
from .schemas import JobRecord

log = logging.getLogger(__name__)

_RECONNECT_SECONDS = 1.0


class Completions:
    def __init__(self, url: str, keys: Keys) -> None:
        # Its own connection: a subscribed connection can do nothing else, and it must not
        # time out while the channel is quiet.
        self._redis: Redis = Redis.from_url(url, socket_timeout=None, health_check_interval=30)
        self._keys = keys
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="completions")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._redis.aclose()

    async def _listen(self) -> None:
        outage = False
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._keys.completions)
                if outage:
                    log.info("completions channel followed again")
                    self._wake_all()  # announcements may have been missed meanwhile
                outage = False
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message and message["type"] == "message":
                        for key in message["data"].split(b","):
                            self._wake(self._keys.prediction_id(key))
            except (RedisError, OSError) as exc:
                if not outage:
                    log.warning("completions channel lost (%s); reconnecting", exc)
                outage = True
                self._wake_all()
                await asyncio.sleep(_RECONNECT_SECONDS)
            finally:
                await pubsub.aclose()

    def _wake(self, prediction_id: str) -> None:
        for future in self._waiters.pop(prediction_id, ()):
            if not future.done():
                future.set_result(None)

    def _wake_all(self) -> None:
        for prediction_id in list(self._waiters):
            self._wake(prediction_id)

    async def wait(
        self,
        prediction_id: str,
        seconds: float,
        read: Callable[[], Awaitable[JobRecord | None]],
        until: Callable[[JobRecord | None], bool] = lambda r: r is None or r.status.final,
    ) -> JobRecord | None:
        """The job's record once ``until(record)`` holds (by default: it is final), or as
        it is after ``seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            future: asyncio.Future[None] = loop.create_future()
            # Registered before reading, so an end announced in between is not missed.
            self._waiters.setdefault(prediction_id, set()).add(future)
            try:
                record = await read()
                left = deadline - loop.time()
                if until(record) or left <= 0:
                    return record
                await asyncio.wait([future], timeout=left)
            finally:
                waiting = self._waiters.get(prediction_id)
                if waiting is not None:
                    waiting.discard(future)
                    if not waiting:
                        del self._waiters[prediction_id]
