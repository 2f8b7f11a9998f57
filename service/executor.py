"""Running model code off the event loop: a thread pool, and a process pool when asked for."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, TypeVar

from .loop import BoundLoop
from .models import Model, ModelConfig, Outcome, load_model

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
        self._loop = BoundLoop()
        if process_models:
            self._processes = ProcessPoolExecutor(
                max_workers=process_workers,
                # spawn: a fresh interpreter, not a fork of a process with threads and a loop.
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_child_init,
                initargs=(list(process_models),),
            )

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await self._loop().run_in_executor(self._threads, fn, *args)

    async def run_batch(self, model: Model, values: list[Any]) -> tuple[list[Outcome], float]:
        """Predicts ``values`` with ``model`` wherever that model runs; answers the outcomes
        and how long a thread model's call itself took (not the hand-over; inf for a
        process model)."""
        if model.execution == "process" and self._processes is not None:
            loop = self._loop()
            outcomes = await loop.run_in_executor(
                self._processes, _child_run_batch, model.name, values
            )
            return outcomes, float("inf")
        return await self.run(_timed_call, model, values)

    async def warm_up(self) -> None:
        """Starts every pool process now (each loads its models) rather than on first use."""
        if self._processes is not None:
            loop = asyncio.get_running_loop()
            await asyncio.gather(
                *(loop.run_in_executor(self._processes, _noop) for _ in range(self._process_count))
            )

    def shutdown(self) -> None:
        # Threads stuck in a model call cannot be interrupted; do not wait for them.
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            self._processes.shutdown(wait=True, cancel_futures=True)


def _timed_call(model: Model, values: list[Any]) -> tuple[list[Outcome], float]:
    began = time.perf_counter()
    outcomes = model.run_batch(values)
    return outcomes, time.perf_counter() - began


def _noop() -> None:
    return None
