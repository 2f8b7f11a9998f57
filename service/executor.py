"""Running model code off the event loop: a thread pool, and a process pool when asked for."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from .errors import ModelUnavailable
from .inline import own_time, usage
from .loop import BoundLoop
from .models import Model, ModelConfig, Outcome, load_model

log = logging.getLogger(__name__)

T = TypeVar("T")

# Models of a pool process, loaded once by its initializer.
_CHILD_MODELS: dict[str, Model] = {}


def _child_init(configs: list[ModelConfig]) -> None:
    for config in configs:
        _CHILD_MODELS[config.name] = load_model(config.name, config.spec, "process")


def _child_run_batch(name: str, values: list[Any]) -> list[Outcome]:
    return _CHILD_MODELS[name].run_batch(values)


class Executor:
    """Threads for models that release the GIL (numpy, scikit-learn, onnxruntime) or wait
    on I/O; processes for pure-Python models whose work holds the GIL.
    """

    def __init__(
        self, threads: int, process_workers: int = 1, process_models: Sequence[ModelConfig] = ()
    ) -> None:
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="model")
        self._processes: ProcessPoolExecutor | None = None
        self._process_count = process_workers
        self._process_models = list(process_models)
        self._loop = BoundLoop()
        self._rebuilding: asyncio.Task[None] | None = None
        self._interrupted: ProcessPoolExecutor | None = None
        if process_models:
            self._processes = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._process_count,
            # spawn: a fresh interpreter, not a fork of a process with threads and a loop.
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_init,
            initargs=(self._process_models,),
        )

    @property
    def healthy(self) -> bool:
        """False while a process pool that broke (a process was killed) is being rebuilt."""
        return self._rebuilding is None or self._rebuilding.done()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await self._loop().run_in_executor(self._threads, fn, *args)

    async def run_batch(self, model: Model, values: list[Any]) -> tuple[list[Outcome], float]:
        """Predicts ``values`` with ``model`` wherever that model runs; answers the outcomes
        and how long a thread model's call took by its own doing (`inline.own_time`; not the
        hand-over; inf for a process model)."""
        if model.execution == "process" and self._processes is not None:
            pool = self._processes
            try:
                outcomes = await self._loop().run_in_executor(
                    pool, _child_run_batch, model.name, values
                )
            except BrokenProcessPool:
                self._replace(pool)
                raise ModelUnavailable(
                    f"The process running model {model.name!r} died; it is being restarted."
                ) from None
            return outcomes, float("inf")
        return await self.run(_timed_call, model, values)

    def interrupt(self) -> None:
        """Ends the pool's processes in the middle of a call no one waits for any more
        (every caller's deadline passed). The call then sees the pool broken, which is
        replaced as after a crash; calls running beside it in the pool fail too, and their
        jobs run again."""
        pool = self._processes
        if pool is None:
            return
        self._interrupted = pool
        for process in list((pool._processes or {}).values()):
            if process.is_alive():
                process.terminate()

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """A process of the pool died (killed, out of memory): the whole pool is unusable
        from then on, so a new one takes its place and is warmed up (readiness is false
        meanwhile). The batches it held fail; queued jobs among them run again later."""
        if self._processes is not broken:
            return  # replaced already, by another batch that saw it broken
        if self._interrupted is broken:
            log.info("a model call no one waits for was cut short; starting a new process pool")
        else:
            log.error("a model process died; starting a new process pool")
        self._processes = self._new_pool()
        broken.shutdown(wait=False, cancel_futures=True)
        self._rebuilding = self._loop().create_task(self._warm_after_rebuild())

    async def _warm_after_rebuild(self) -> None:
        await self.warm_up()
        log.warning("the new model process pool is ready")

    async def warm_up(self) -> None:
        """Starts every pool process now (each loads its models) rather than on first use."""
        if self._processes is not None:
            loop = asyncio.get_running_loop()
            pool = self._processes
            await asyncio.gather(
                *(loop.run_in_executor(pool, _noop) for _ in range(self._process_count))
            )

    def shutdown(self) -> None:
        # Threads stuck in a model call cannot be interrupted; do not wait for them.
        if self._rebuilding is not None:
            self._rebuilding.cancel()
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            # The same for a process: a call still running is not waited for (its job is
            # still pending for another replica); its process is terminated.
            processes = list((self._processes._processes or {}).values())
            self._processes.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                if process.is_alive():
                    process.terminate()


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
        began, before = time.perf_counter(), usage()
        outcomes = model.run_batch(values)
        return outcomes, own_time(time.perf_counter() - began, before, usage())
    finally:
        with _calls_lock:
            _calls_running -= 1


def _noop() -> None:
    return None
