"""Running a worker's batch of jobs through their models: each input checked again, one
model call per model, bounded by the jobs' deadlines (`service.jobs.deadlines`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from service.errors import InvalidInput, NotFound
from service.execution.batching import Batchers
from service.execution.streams import Chunks, End
from service.job import Entry, Outcome
from service.jobs import deadlines
from service.jobs.files import Files, call_folder, has_files
from service.jobs.outputs import Outputs
from service.models import ModelRegistry
from service.observability.tracing import Tracing
from service.redis.keys import Keys
from service.redis.words import Marked

_NO_SPAN = contextlib.nullcontext()


@dataclass(frozen=True, slots=True)
class RunLimits:
    """A job fails past ``job_timeout`` seconds from submission (0: none), and a streaming
    call past ``max_chunks`` chunks."""

    job_timeout: float = 0.0
    max_chunks: int = 10_000


class JobRunner:
    """Predicts the entries of a batch with ``models`` through their ``batchers``; a model
    that streams runs each job on its own, its chunks kept in ``outputs`` as they come.
    With ``tracing``, each model call is a span linked to its jobs."""

    def __init__(
        self,
        models: ModelRegistry,
        batchers: Batchers,
        outputs: Outputs,
        limits: RunLimits,
        tracing: Tracing | None = None,
        files: Files | None = None,
    ) -> None:
        self._models = models
        self._batchers = batchers
        self._outputs = outputs
        self._job_timeout = limits.job_timeout
        self._max_chunks = limits.max_chunks
        self._tracing = tracing
        self._files = files

    @property
    def streaming(self) -> bool:
        """Whether any model here streams."""
        return bool(self._models.streaming)

    def streams(self, model: str) -> bool:
        """Whether ``model`` streams (its jobs run one by one, beside the worker's reads)."""
        return model in self._models.streaming

    async def predict(self, entries: list[Entry], keys: Keys) -> list[Outcome]:
        """Outcomes in entry order: one batch call per model (one call per job of a model
        that streams); a job that cannot run here (an unknown model, an input that no
        longer fits) fails alone, saying why. ``keys``: the partition of the entries."""
        if self._tracing is not None:
            self._tracing.jobs_started(entries, time.time())
        files = self._models.with_files
        if self._files is None or not any(e.model in files for e in entries):
            outcomes = await self._predict(entries, keys, None)
            return await self._stored(entries, outcomes)
        async with call_folder(self._files.settings.spool) as folder:
            outcomes = await self._predict(entries, keys, folder)
            return await self._stored(entries, outcomes)  # an output may be an input

    async def _stored(self, entries: list[Entry], outcomes: list[Outcome]) -> list[Outcome]:
        """The outcomes, each file a model returned stored (see `_files_out`)."""
        files = self._models.with_files
        if self._files is None or not any(
            e.model in files or has_files(o.payload) for e, o in zip(entries, outcomes, strict=True)
        ):
            return outcomes
        return list(
            await asyncio.gather(
                *(self._files_out(e, o) for e, o in zip(entries, outcomes, strict=True))
            )
        )

    async def _predict(
        self, entries: list[Entry], keys: Keys, folder: Path | None
    ) -> list[Outcome]:
        outcomes: list[Outcome] = [Outcome(ok=False)] * len(entries)
        groups: dict[str, tuple[list[int], list[Any]]] = {}
        inputs = await self._inputs(entries, folder) if folder else None
        for i, entry in enumerate(entries):
            try:
                model = self._models.get(entry.model)
                raw = inputs[i] if inputs else orjson.loads(entry.input_json)
                if isinstance(raw, BaseException):
                    raise raw
                value = model.validate(raw)
            except (NotFound, InvalidInput) as exc:
                outcomes[i] = Outcome(ok=False, error=exc.message)
                continue
            except orjson.JSONDecodeError as exc:
                outcomes[i] = Outcome(ok=False, error=f"Invalid input: {exc}")
                continue
            slots, values = groups.setdefault(entry.model, ([], []))
            slots.append(i)
            values.append(value)
        for name, (slots, values) in groups.items():
            batch = [entries[i] for i in slots]
            if self._models.get(name).streams:
                results = await asyncio.gather(
                    *(self._stream(name, keys, e, v) for e, v in zip(batch, values, strict=True))
                )
            else:
                results = await self._call(name, batch, values)
            now = time.time()
            for i, entry, outcome in zip(slots, batch, results, strict=True):
                outcomes[i] = deadlines.settled(entry, outcome, now)
        return outcomes

    async def _inputs(self, entries: list[Entry], folder: Path) -> list[Any]:
        """Each job's input, its files fetched into ``folder`` (an exception in place of
        an input that cannot be had)."""
        assert self._files is not None
        files = self._files

        async def one(entry: Entry) -> Any:
            raw = orjson.loads(entry.input_json)
            if entry.model not in self._models.with_files:
                return raw
            fields = self._models.get(entry.model).file_fields
            own = folder / entry.prediction_id
            await asyncio.to_thread(own.mkdir)
            return await files.materialize(entry.prediction_id, raw, fields, own)

        answers = await asyncio.gather(*(one(e) for e in entries), return_exceptions=True)
        for answer in answers:
            # A job's own fault fails it alone; the store failing raises (the batch stays
            # pending, to be run again once it answers).
            if isinstance(answer, BaseException) and not isinstance(answer, _JOB_FAULTS):
                raise answer
        return answers

    async def _files_out(self, entry: Entry, outcome: Outcome) -> Outcome:
        """Stores the files a job's model returned; a canceled job's files go at once, the
        others' when their record expires."""
        assert self._files is not None
        if entry.model not in self._models.with_files and not has_files(outcome.payload):
            return outcome
        if outcome.canceled:
            await self._files.discard(entry.prediction_id)
            return outcome
        outcome = await self._files.outputs(entry.prediction_id, outcome)
        await self._files.keep_for(entry.prediction_id)
        return outcome

    async def given_up(self, entries: list[Entry], prior: Sequence[Any]) -> None:
        """Removes the files of the jobs that mark found dead-lettered, timed out or
        aborted: they never run, and their files go at once."""
        if self._files is None:
            return
        for entry, status in zip(entries, prior, strict=True):
            if status in _GIVEN_UP and entry.model in self._models.with_files:
                await self._files.discard(entry.prediction_id)

    async def _call(self, model: str, batch: list[Entry], values: list[Any]) -> list[Outcome]:
        """One model call, waited for no longer than its jobs' deadlines allow. Past them no
        one waits for it: a process model's call is cut short, a thread model's runs on (a
        thread cannot be stopped) and its results are dropped."""
        wait = deadlines.batch_wait(batch, self._job_timeout, time.time())
        span = self._tracing.batch(model, batch) if self._tracing else _NO_SPAN
        try:
            with span:
                if not wait.seconds:
                    return await self._batchers[model].run(values)
                return await asyncio.wait_for(self._batchers[model].run(values), wait.seconds)
        except TimeoutError:
            ended = deadlines.CANCELED if wait.cancels else deadlines.timed_out(self._job_timeout)
            return [ended] * len(values)

    async def _stream(self, model: str, keys: Keys, entry: Entry, value: Any) -> Outcome:
        """One job of a streaming model: each chunk kept in Redis as it comes (so readers on
        any replica follow it), the final result the list of them. Stopped before its next
        chunk by a DELETE, its Cancel-After or its time limit (then canceled, or failed:
        timed out), or past MAX_STREAM_CHUNKS (failed)."""

        appender = self._outputs.appender(keys, entry.prediction_id)
        wait = deadlines.batch_wait([entry], self._job_timeout, time.time())
        chunks = self._batchers[model].stream(value)
        try:
            outcome = await drain(chunks, wait, self._job_timeout, self._max_chunks, appender.add)
        except BaseException:
            appender.drop()
            raise
        # Every chunk lands before the final record is written; a stop asked meanwhile
        # (a DELETE racing the last chunk) still ends the job canceled.
        if not await appender.landed() and outcome.ok:
            return STOPPED
        return outcome


#: What mark answers for a job that will never run.
_GIVEN_UP = (Marked.DEAD, Marked.EXPIRED, Marked.ABORTED)
#: What fails one job of a batch alone, when its input is read.
_JOB_FAULTS = (NotFound, InvalidInput, orjson.JSONDecodeError)


#: A running stream its reader stopped (a DELETE): canceled, its chunks so far kept.
STOPPED = Outcome(ok=False, error="canceled: stopped by a DELETE", canceled=True)


async def drain(
    chunks: Chunks,
    wait: deadlines.Wait,
    job_timeout: float,
    most: int,
    each: Callable[[int, bytes], Awaitable[bool]] | None = None,
) -> Outcome:
    """Reads a streaming call to its end, handing each chunk to ``each`` (with its number)
    as it comes: the outcome, its result the list of the chunks. Stops the model before
    its next chunk when ``each`` answers False (canceled), when ``wait`` runs out
    (canceled past a Cancel-After, failed past JOB_TIMEOUT_SECONDS), past ``most`` chunks
    (failed, saying so), or when the reader fails or is cancelled."""
    made: list[bytes] = []
    try:
        # One timer for the whole call (the reader's writes included), not one per chunk.
        async with asyncio.timeout(wait.seconds or None):
            while True:
                item = await chunks.next()
                if isinstance(item, End):
                    if item.error:
                        return Outcome(ok=False, error=item.error)
                    return Outcome(ok=True, payload=b"[" + b",".join(made) + b"]")
                if len(made) == most:
                    chunks.stop()
                    error = (
                        f"stopped: the model yielded more than MAX_STREAM_CHUNKS ({most}) chunks"
                    )
                    return Outcome(ok=False, error=error)
                made.append(item)
                if each is not None and not await each(len(made), item):
                    chunks.stop()
                    return STOPPED
    except TimeoutError:
        chunks.stop()
        return deadlines.CANCELED if wait.cancels else deadlines.timed_out(job_timeout)
    except BaseException:
        chunks.stop()
        raise
