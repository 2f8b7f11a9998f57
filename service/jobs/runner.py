"""Running a worker's batch of jobs through their models: each input checked again, one
model call per model, bounded by the jobs' deadlines (`service.jobs.deadlines`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson

from service.errors import InvalidInput, NotFound
from service.execution.batching import Batchers
from service.job import Entry, Outcome
from service.jobs import deadlines
from service.models import ModelRegistry
from service.observability.tracing import Tracing

_NO_SPAN = contextlib.nullcontext()


class JobRunner:
    """Predicts the entries of a batch with ``models`` through their ``batchers``; with
    ``tracing``, each model call is a span linked to its jobs."""

    def __init__(
        self,
        models: ModelRegistry,
        batchers: Batchers,
        job_timeout: float = 0.0,
        tracing: Tracing | None = None,
    ) -> None:
        self._models = models
        self._batchers = batchers
        self._job_timeout = job_timeout
        self._tracing = tracing

    async def predict(self, entries: list[Entry]) -> list[Outcome]:
        """Outcomes in entry order: one batch call per model; a job that cannot run here
        (an unknown model, an input that no longer fits) fails alone, saying why."""
        if self._tracing is not None:
            self._tracing.jobs_started(entries, time.time())
        outcomes: list[Outcome] = [Outcome(ok=False)] * len(entries)
        groups: dict[str, tuple[list[int], list[Any]]] = {}
        for i, entry in enumerate(entries):
            try:
                model = self._models.get(entry.model)
                value = model.validate(orjson.loads(entry.input_json))
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
            results = await self._call(name, batch, values)
            now = time.time()
            for i, entry, outcome in zip(slots, batch, results, strict=True):
                outcomes[i] = deadlines.settled(entry, outcome, now)
        return outcomes

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
