"""Streaming: a model whose predict is a generator yields its output piece by piece. Each
call runs on its own (no batch), in a thread, a model process or on the loop itself as
the model declares, and hands its chunks (JSON, serialized where they are made) to the
loop through a bounded channel: while `ROOM` chunks are unread the model waits, so a slow
reader holds the model, never memory. The reader may stop the call at any chunk: the
generator is closed (its `finally` runs) before it makes another."""

from __future__ import annotations

import asyncio
import collections
import inspect
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from service.models.base import chunks_of

#: Chunks made and not yet read, at most, per call.
ROOM = 16
_DUMPS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


@dataclass(frozen=True, slots=True)
class End:
    """The last item of a call's channel: it ended, with ``error`` ('' when it ended well)."""

    error: str = ""


def serialized(chunk: Any, number: int) -> bytes | End:
    """A chunk as JSON, or the End that says which chunk could not be written, and why."""
    try:
        return orjson.dumps(chunk, option=_DUMPS)
    except (TypeError, orjson.JSONEncodeError):
        return End(f"chunk {number} is not JSON: a {type(chunk).__name__}")


def failure(exc: BaseException) -> End:
    return End(f"Prediction failed: {type(exc).__name__}: {exc}")


class Chunks:
    """One call's chunks, from where the model runs to the loop. ``next()`` answers each
    chunk (JSON bytes) in order, then an `End`. ``stop()`` asks the model to stop."""

    def __init__(self, room: int = ROOM, released: Callable[[], None] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: collections.deque[bytes | End] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._room = room
        # A producer in a thread waits for a credit per chunk; one in a model process waits
        # on its own semaphore, which ``released`` gives back.
        self._credits = threading.Semaphore(room)
        self._released = released or self._credits.release
        self._space: asyncio.Event | None = None  # for a producer on the loop
        #: The reader stopped the call (it went away, or the job was canceled).
        self.stopped = False
        self.ended = False
        self._failure: BaseException | None = None

    # -- the producer's side ---------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """From a thread: hands one chunk over, waiting while ROOM chunks are unread;
        False once the reader stopped the call (then the producer stops)."""
        while not self._credits.acquire(timeout=0.5):
            if self.stopped:
                return False
        return not self.stopped and self.deliver(data)

    def close(self, end: End) -> None:
        """From a thread: the call ended."""
        self.deliver(end)

    def deliver(self, item: bytes | End) -> bool:
        """From a thread, an item that needs no room (a model process's chunk waited for its
        own): hands it over; False when the loop is gone (the replica stopped)."""
        try:
            self._loop.call_soon_threadsafe(self._push, item)
        except RuntimeError:
            return False
        return True

    async def put(self, item: bytes | End) -> bool:
        """On the loop (a model called inline): hands one item over, waiting while ROOM
        chunks are unread; False once the reader stopped the call."""
        while len(self._items) >= self._room and not self.stopped:
            self._space = self._space or asyncio.Event()
            self._space.clear()
            await self._space.wait()
        if self.stopped and not isinstance(item, End):
            return False
        self._push(item)
        return True

    # -- the reader's side -----------------------------------------------------------------

    def _push(self, item: bytes | End) -> None:
        if self.stopped:
            if not isinstance(item, End):
                self._released()  # nobody reads it: its credit goes back at once
            return
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> bytes | End:
        """The next chunk, or the End; raises what `abandon` was given."""
        while not self._items:
            if self._failure is not None:
                raise self._failure
            self._waiter = self._loop.create_future()
            await self._waiter
        item = self._items.popleft()
        if isinstance(item, End):
            self.ended = True
        else:
            self._released()
            if self._space is not None:
                self._space.set()
        return item

    def abandon(self, error: BaseException) -> None:
        """Stops the call and makes the reader's `next` raise ``error`` (the replica stops:
        the job goes back on the queue rather than end with the chunks so far)."""
        self._failure = error
        self.stop()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def stop(self) -> None:
        """Asks the producer to stop before its next chunk; what it sent is dropped."""
        if self.stopped:
            return
        self.stopped = True
        for item in self._items:
            if not isinstance(item, End):
                self._released()
        self._items.clear()
        self._released()  # a producer waiting for room wakes and sees the stop
        if self._space is not None:
            self._space.set()


_running_lock = threading.Lock()
_running = 0


def streams_running() -> int:
    """Streaming calls running in threads of this process right now."""
    return _running


def produce(stream: Any, chunks: Chunks) -> None:
    """Runs a model's generator in this thread, sending each chunk to ``chunks``."""
    global _running
    with _running_lock:
        _running += 1
    iterator = chunks_of(stream)
    end = End()
    try:
        for number, chunk in enumerate(iterator, 1):
            data = serialized(chunk, number)
            if isinstance(data, End):
                end = data
                break
            if not chunks.send(data):
                break
    except Exception as exc:
        end = failure(exc)
    finally:
        iterator.close()
        chunks.close(end)
        with _running_lock:
            _running -= 1


async def produce_inline(stream: Any, chunks: Chunks) -> None:
    """Runs a model's generator on the loop (a model that declares its calls cheap)."""
    end = End()
    number = 0
    try:
        if inspect.isasyncgen(stream):
            async for chunk in _closing(stream):
                number += 1
                data = serialized(chunk, number)
                if isinstance(data, End) or not await chunks.put(data):
                    end = data if isinstance(data, End) else end
                    break
        else:
            for chunk in stream:
                number += 1
                data = serialized(chunk, number)
                if isinstance(data, End) or not await chunks.put(data):
                    end = data if isinstance(data, End) else end
                    break
            stream.close()
    except Exception as exc:
        end = failure(exc)
    await chunks.put(end)


async def _closing(stream: Any) -> AsyncIterator[Any]:
    try:
        async for chunk in stream:
            yield chunk
    finally:
        await stream.aclose()
