"""The model processes (execution 'process'): each is a pool of its own, so ending one
fails no call running in another.

A process pool of N workers is broken as a whole when one of its processes dies: every
call it holds fails with it. A call no one waits for any more (every caller's deadline
passed) is cut short by ending its process, and a process may be killed (out of memory);
with one pool for all, either failed the calls running beside it in the other processes,
and their callers saw 503s. Here a call takes an idle process, and only that process is
ended or replaced.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from service.errors import ModelUnavailable
from service.execution import children
from service.execution.loop import BoundLoop
from service.execution.streams import Chunks, End
from service.job import Outcome
from service.models import ModelConfig

log = logging.getLogger(__name__)


def _alive(pool: ProcessPoolExecutor) -> list[Any]:
    """The pool's processes still running (its process table is the executor's own)."""
    return [p for p in list((pool._processes or {}).values()) if p.is_alive()]


def _none_left() -> ModelUnavailable:
    return ModelUnavailable("No model process could be restarted; see the log.")


def _died(model: str) -> Outcome:
    """The outcome of an input whose process died running it alone (lost: a queued job is
    delivered again, up to MAX_DELIVERIES, then dead-lettered)."""
    return Outcome(
        ok=False,
        error=f"The process running model {model!r} died on this input; it is being restarted.",
        lost=True,
    )


class _Died(Exception):
    """The process died while it ran the call."""


class Call:
    """One batch call in a process, for `Processes.interrupt`."""

    __slots__ = ("dropped",)

    def __init__(self) -> None:
        self.dropped = False  # no one waits for it any more: what has not started never does


class Processes:
    """``count`` model processes, each loading ``models`` when it starts."""

    def __init__(self, count: int, models: list[ModelConfig]) -> None:
        self._models = models
        self._context = multiprocessing.get_context("spawn")
        self._started = [self._context.Value("q", 0, lock=False) for _ in range(count)]
        self._numbers = itertools.count(1)
        self._pools = [self._new_pool(slot) for slot in range(count)]
        self._idle = list(range(count))
        self._waiters: collections.deque[asyncio.Future[int]] = collections.deque()
        self._calls: dict[int, Call] = {}  # the call each busy process runs
        self._rebuilding: dict[int, asyncio.Task[None]] = {}
        self._dead: set[int] = set()  # replaced by a process that failed to start
        self._interrupted: set[int] = set()  # processes ended on purpose, not crashed
        self._loop = BoundLoop()

    def _new_pool(self, slot: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1,
            # spawn: a fresh interpreter, not a fork of a process with threads and a loop.
            mp_context=self._context,
            initializer=children.init,
            initargs=(self._models, self._started[slot]),
        )

    @property
    def healthy(self) -> bool:
        """False while no process can take a call (each is being replaced, or failed to).
        An idle process found dead is replaced now (readiness asks this often)."""
        for slot in list(self._idle):
            if not _alive(self._pools[slot]):
                self._idle.remove(slot)
                self._replace(slot, self._pools[slot])
        return len(self._rebuilding) + len(self._dead) < len(self._pools)

    def pids(self) -> set[int]:
        """The live processes' ids."""
        return {process.pid for pool in self._pools for process in _alive(pool)}

    async def run_batch(self, model: str, values: list[Any], call: Call) -> list[Outcome]:
        """The outcomes of ``values``. When the process dies running several, each is run
        alone on a process of its own turn, so that one input that kills its process (a
        poison input) fails alone (`_died`) and the others get their outcomes."""
        try:
            return await self._run(model, values, call)
        except _Died:
            if call.dropped:
                raise ModelUnavailable("No one waits for this model call any more.") from None
            if len(values) == 1:
                return [_died(model)]
        log.warning(
            "a model process died running a batch of %d; running each input alone", len(values)
        )
        alone = await asyncio.gather(
            *(self._run(model, [value], call) for value in values), return_exceptions=True
        )
        out: list[Outcome] = []
        for outcome in alone:
            if isinstance(outcome, _Died):
                out.append(_died(model))
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                out.extend(outcome)
        return out

    async def _run(self, model: str, values: list[Any], call: Call) -> list[Outcome]:
        """One call on an idle process; again on another one if its process was found dead
        before the call started (it never ran); _Died if it died while the call ran."""
        while True:
            slot = await self._idle_process()
            if call.dropped:
                self._give_back(slot)
                raise ModelUnavailable("No one waits for this model call any more.")
            pool = self._pools[slot]
            number = next(self._numbers)
            self._calls[slot] = call
            try:
                return await self._loop().run_in_executor(
                    pool, children.run_batch, model, values, number
                )
            except BrokenProcessPool:
                interrupted = slot in self._interrupted
                self._replace(slot, pool)
                if interrupted or call.dropped:
                    raise ModelUnavailable(
                        f"The call of model {model!r} was cut short: no one waits for it."
                    ) from None
                if self._started[slot].value == number:
                    raise _Died() from None
                log.warning("a model process was found dead before a call; calling again")
            finally:
                del self._calls[slot]
                if slot not in self._rebuilding:
                    self._give_back(slot)

    async def stream(self, model: str, value: Any, chunks: Chunks) -> None:
        """Runs a streaming call on an idle process, pulling its chunks one at a time into
        ``chunks`` (the process waits between them while the reader has no room); stops
        it, closing its generator, when the reader stops. A process that dies ends the
        stream with an error; it is replaced."""
        slot = await self._idle_process()
        pool, number = self._pools[slot], next(self._numbers)
        loop = self._loop()
        end = End()
        try:
            await loop.run_in_executor(pool, children.open_stream, model, value, number)
            while not chunks.stopped:
                item = await loop.run_in_executor(pool, children.next_chunk, number)
                if isinstance(item, End):
                    end = item
                    break
                await chunks.put(item)
            else:
                await loop.run_in_executor(pool, children.close_stream, number)
        except BrokenProcessPool:
            self._replace(slot, pool)
            end = End(f"The process running model {model!r} died; it is being restarted.")
        finally:
            if slot not in self._rebuilding:
                self._give_back(slot)
        await chunks.put(end)

    def interrupt(self, call: Call) -> None:
        """Ends the process running ``call`` (its callers all gave up); the call sees its
        process gone, which is replaced as after a crash. A call not started yet never
        starts. No other call is touched."""
        call.dropped = True  # and, when it ran in pieces (see run_batch), no piece starts
        for slot, running in self._calls.items():
            if running is call:
                self._interrupted.add(slot)
                for process in _alive(self._pools[slot]):
                    process.terminate()

    async def _idle_process(self) -> int:
        """An idle live process; else the next one to become idle, or to be ready again
        after it was replaced (a call never fails only because the processes are
        restarting: a queued job would spend a delivery on it). A process found dead (killed
        while idle) is replaced, never handed to a call."""
        while self._idle:
            slot = self._idle.pop()
            if _alive(self._pools[slot]):
                return slot
            self._replace(slot, self._pools[slot])
        if len(self._dead) == len(self._pools):
            raise _none_left()
        waiter: asyncio.Future[int] = self._loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._give_back(waiter.result())  # handed over just as the caller left
            raise

    def _give_back(self, slot: int) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        self._idle.append(slot)

    def _replace(self, slot: int, broken: ProcessPoolExecutor) -> None:
        """A new process takes the place of one that died; it takes calls once it has
        loaded its models (readiness is false while no process can take one)."""
        if self._pools[slot] is not broken:
            return
        if slot in self._interrupted:
            self._interrupted.discard(slot)
            log.info("a model call no one waits for was cut short; starting a new process")
        else:
            log.error("a model process died; starting a new one")
        self._pools[slot] = self._new_pool(slot)
        broken.shutdown(wait=False, cancel_futures=True)
        self._rebuilding[slot] = self._loop().create_task(self._warm(slot))

    async def _warm(self, slot: int) -> None:
        try:
            await self._loop().run_in_executor(self._pools[slot], children.noop)
        except Exception:
            log.exception("a new model process failed to start; it stays out of service")
            del self._rebuilding[slot]
            self._dead.add(slot)
            if len(self._dead) == len(self._pools):
                while self._waiters:
                    waiter = self._waiters.popleft()
                    if not waiter.done():
                        waiter.set_exception(_none_left())
            return
        del self._rebuilding[slot]
        self._give_back(slot)
        log.warning("the new model process is ready")

    async def warm_up(self) -> None:
        """Starts every process now (each loads its models) rather than on first use."""
        loop = self._loop()
        await asyncio.gather(*(loop.run_in_executor(pool, children.noop) for pool in self._pools))

    def shutdown(self) -> None:
        """Ends every process; a call still running is not waited for (its job is still
        pending for another replica)."""
        for task in self._rebuilding.values():
            task.cancel()
        for pool in self._pools:
            processes = _alive(pool)
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.terminate()
