"""Running model code off the event loop: a thread pool, and model processes when asked for."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from service.execution.inline import timed
from service.execution.loop import BoundLoop
from service.execution.processes import Call, Processes
from service.execution.streams import Chunks, produce, produce_inline
from service.job import Outcome
from service.models import Model, ModelConfig

T = TypeVar("T")


class Executor:
    """Threads for models that release the GIL (numpy, scikit-learn, onnxruntime) or wait
    on I/O; processes for pure-Python models whose work holds the GIL (`Processes`).
    """

    def __init__(
        self,
        threads: int,
        process_workers: int = 1,
        process_models: Sequence[ModelConfig] = (),
        stream_threads: int = 64,
    ) -> None:
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="model")
        # A streaming call holds its thread from its first chunk to its last, mostly
        # waiting (for its reader, for a device, for an upstream call): threads of their
        # own, so that streams never hold up the batch calls.
        self._streams = ThreadPoolExecutor(max_workers=stream_threads, thread_name_prefix="stream")
        self._stream_tasks: set[asyncio.Future[None]] = set()
        self._open: set[Chunks] = set()  # the streams running, stopped at shutdown
        self._abandoned: BaseException | None = None  # the replica stops: new streams fail
        self.processes: Processes | None = None
        if process_models:
            self.processes = Processes(process_workers, list(process_models))
        self._loop = BoundLoop()

    @property
    def healthy(self) -> bool:
        """False while no model process can take a call (each died and is being replaced)."""
        return self.processes is None or self.processes.healthy

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await self._loop().run_in_executor(self._threads, fn, *args)

    async def run_batch(
        self, model: Model, values: list[Any], call: Call | None = None
    ) -> tuple[list[Outcome], float]:
        """Predicts ``values`` with ``model`` wherever that model runs; answers the outcomes
        and how long a thread model's call took by its own doing (`inline.own_time`; not the
        hand-over; inf for a process model). ``call`` names a process call for `interrupt`."""
        if model.execution == "process" and self.processes is not None:
            outcomes = await self.processes.run_batch(model.name, values, call or Call())
            return outcomes, float("inf")
        return await self.run(_timed_call, model, values)

    def stream(self, model: Model, value: Any) -> Chunks:
        """Starts a streaming call of ``model`` for one validated input, where the model
        runs (a thread of its own, a model process, or the loop for a model that declares
        its calls cheap); answers the channel its chunks arrive on."""
        loop = self._loop()
        chunks = Chunks()
        if self._abandoned is not None:
            chunks.abandon(self._abandoned)
            return chunks
        running: asyncio.Future[None]
        if model.execution == "process" and self.processes is not None:
            running = loop.create_task(self.processes.stream(model.name, value, chunks))
        elif model.inline:
            running = loop.create_task(produce_inline(model.open_stream(value), chunks))
        else:
            running = loop.run_in_executor(self._streams, produce, model.open_stream(value), chunks)
        self._stream_tasks.add(running)
        self._open.add(chunks)

        def ended(_: object) -> None:
            self._stream_tasks.discard(running)
            self._open.discard(chunks)

        running.add_done_callback(ended)
        return chunks

    def abandon_streams(self, error: BaseException) -> None:
        """Stops every streaming call under way, their readers told ``error``; so is any
        started from now on (the replica stops)."""
        self._abandoned = error
        for chunks in list(self._open):
            chunks.abandon(error)

    def interrupt(self, call: Call) -> None:
        """Ends the process running ``call``, a call no one waits for any more (every
        caller's deadline passed); calls in other processes go on."""
        if self.processes is not None:
            self.processes.interrupt(call)

    async def warm_up(self) -> None:
        """Starts every model process now (each loads its models) rather than on first use."""
        if self.processes is not None:
            await self.processes.warm_up()

    def shutdown(self) -> None:
        # Threads stuck in a model call cannot be interrupted; do not wait for them.
        self._threads.shutdown(wait=False, cancel_futures=True)
        for chunks in list(self._open):  # their threads end before their next chunk
            chunks.stop()
        self._streams.shutdown(wait=False, cancel_futures=True)
        if self.processes is not None:
            self.processes.shutdown()


_calls_lock = threading.Lock()
_calls_running = 0


def calls_running() -> int:
    """Model calls running in threads of this process right now."""
    return _calls_running


def _timed_call(model: Model, values: list[Any]) -> tuple[list[Outcome], float]:
    global _calls_running
    with _calls_lock:
        _calls_running += 1
    try:
        outcomes, _, own = timed(model.run_batch, values)
        return outcomes, own
    finally:
        with _calls_lock:
            _calls_running -= 1
