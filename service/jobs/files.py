"""Files of jobs: inputs taken in (uploads, URLs, data URIs) and outputs a model returned,
kept in the blob store (`service.blobs`) under ``<prediction id>/<name>``. A job's input
and its result hold each file as its URL on the service, ``/predict/<id>/files/<name>``:
a queue entry and a record carry a few dozen bytes per file, never the bytes.

Lifetimes: every prediction id with files is in a sorted set (`Names.files`) scored by
when its files go: its record's expiry (RESULT_TTL_SECONDS after it ended). Every replica
sweeps the set; a canceled, aborted or dead-lettered job's files go at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from service.blobs import BlobStore
from service.errors import InvalidInput
from service.job import Outcome
from service.jobs.intake import FileSettings, Intake, Taken, loc_of, suffix_of, where
from service.models.base import FILE_MARK
from service.observability.metrics import Metrics

log = logging.getLogger(__name__)

#: A file's name in the store: letters, digits, dot, dash, underscore; no leading dot.
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
#: A job's files go this long after its record expires (never before it).
KEEP_MARGIN_SECONDS = 10
#: Due jobs whose files one sweep removes at most (it goes on while there are more).
_SWEEP_BATCH = 100
_MARK = FILE_MARK.encode()


def url_of(prediction_id: str, name: str) -> str:
    """A stored file's URL on the service."""
    return f"/predict/{prediction_id}/files/{name}"


def has_files(payload: bytes) -> bool:
    return _MARK in payload


class Files:
    """The files of jobs in ``store``, their lifetimes in the sorted set ``due_key``."""

    def __init__(
        self,
        store: BlobStore,
        redis: Redis,
        due_key: str,
        settings: FileSettings,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self._redis = redis
        self._due_key = due_key
        self.settings = settings
        self._metrics = metrics
        #: Takes file inputs in (uploads, URLs, data: URIs), before they are stored here.
        self.intake = Intake(settings, metrics)

    # -- lifetimes ------------------------------------------------------------------------
    async def keep_for(self, prediction_id: str, longer: float = 0.0) -> None:
        """The job's files go with its record: RESULT_TTL_SECONDS from now (and a margin,
        so that none goes before its record), ``longer`` seconds more for a job that may
        yet wait in the queue. Called again when the job ends."""
        due = time.time() + self.settings.ttl + KEEP_MARGIN_SECONDS + longer
        await self._redis.zadd(self._due_key, {prediction_id: due})

    async def discard(self, prediction_id: str) -> None:
        """Removes the job's files now (a canceled, aborted or dead-lettered job; an upload
        that failed midway). Never raises: what is left is swept when due."""
        try:
            await self.store.delete(f"{prediction_id}/")
            await self._redis.zrem(self._due_key, prediction_id)
        except Exception as exc:
            log.warning("files of %s not removed yet (%s); swept later", prediction_id, exc)

    async def sweep(self, now: float | None = None) -> int:
        """Removes the files of every job due by ``now``; how many jobs."""
        due = await self._redis.zrangebyscore(
            self._due_key, "-inf", now or time.time(), start=0, num=_SWEEP_BATCH
        )
        for raw in due:
            prediction_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            await self.store.delete(f"{prediction_id}/")
            await self._redis.zrem(self._due_key, prediction_id)
        return len(due)

    async def sweep_forever(self, every: float) -> None:
        while True:
            try:
                while await self.sweep() == _SWEEP_BATCH:
                    pass
            except Exception as exc:
                log.warning("file sweep failed (%s); trying again in %g s", exc, every)
            await asyncio.sleep(every)

    # -- inputs ---------------------------------------------------------------------------
    async def store_input(self, prediction_id: str, taken: Taken) -> str:
        """Stores one taken input file under the job: its URL."""
        size = await self.store.put(f"{prediction_id}/{taken.name}", taken.path)
        if self._metrics is not None:
            self._metrics.count_file("input", size)
        return url_of(prediction_id, taken.name)

    async def close(self) -> None:
        await self.intake.close()
        await self.store.close()

    # -- a job's run ----------------------------------------------------------------------
    async def materialize(
        self, prediction_id: str, raw: Any, fields: tuple[str, ...], folder: Path
    ) -> Any:
        """The job's input with each file's URL replaced by a local copy in ``folder`` (a
        link when the store is a folder on this disk). Only the job's own files: any other
        value is refused (InvalidInput), as it could name another job's files."""
        wanted: list[tuple[str, str]] = []
        if fields == ("",):
            wanted.append(("", _own_name(prediction_id, raw, "")))
        elif isinstance(raw, dict):
            for name in fields:
                if raw.get(name) is not None:
                    wanted.append((name, _own_name(prediction_id, raw[name], name)))
        paths = [folder / name for _, name in wanted]
        try:
            await asyncio.gather(
                *(
                    self.store.fetch(f"{prediction_id}/{n}", p)
                    for (_, n), p in zip(wanted, paths, strict=True)
                )
            )
        except FileNotFoundError:
            raise InvalidInput("An input file of this job is gone (expired or removed).") from None
        if fields == ("",):
            return str(paths[0])
        return {**raw, **{f: str(p) for (f, _), p in zip(wanted, paths, strict=True)}}

    async def outputs(self, prediction_id: str, outcome: Outcome) -> Outcome:
        """The outcome with each file a model returned stored under the job, and its URL in
        its place (``result`` for a whole output, ``result.<field>`` for a field)."""
        if not outcome.ok or _MARK not in outcome.payload:
            return outcome
        made: list[Path] = []
        stored: dict[str, str] = {}

        async def store(mark: str, where: str) -> str:
            kind, local = mark[len(FILE_MARK)], Path(mark[len(FILE_MARK) + 1 :])
            if kind == "t":
                made.append(local)
            name = f"result{'.' + where if where else ''}{suffix_of(local.name)}"
            name = _unique(name, stored)
            size = await self.store.put(f"{prediction_id}/{name}", local)
            if self._metrics is not None:
                self._metrics.count_file("output", size)
            stored[name] = url_of(prediction_id, name)
            return stored[name]

        try:
            result = await _replace(orjson.loads(outcome.payload), store, "")
        except (OSError, ValueError) as exc:
            return Outcome(ok=False, error=f"A file the model returned cannot be stored: {exc}")
        finally:
            for path in made:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(path.unlink)
        return Outcome(ok=True, payload=orjson.dumps(result))


async def _replace(value: Any, store: Callable[[str, str], Any], where: str) -> Any:
    """``value`` with every file mark in it stored (``where``: its field path)."""
    if isinstance(value, str):
        return await store(value, where) if value.startswith(FILE_MARK) else value
    if isinstance(value, dict):
        return {
            k: await _replace(v, store, f"{where}.{k}" if where else str(k))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            await _replace(v, store, f"{where}.{i}" if where else str(i))
            for i, v in enumerate(value)
        ]
    return value


def _unique(name: str, taken: dict[str, str]) -> str:
    """``name`` made safe for a key, and not one already in ``taken``."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:180]
    candidate, n = safe, 1
    while candidate in taken:
        n += 1
        candidate = f"{n}-{safe}"
    return candidate


def _own_name(prediction_id: str, value: Any, field: str) -> str:
    prefix = f"/predict/{prediction_id}/files/"
    if isinstance(value, str) and value.startswith(prefix) and NAME.fullmatch(value[len(prefix) :]):
        return value[len(prefix) :]
    raise InvalidInput(
        f"The input file of {where(field)} is not one of this job's files.",
        [{"loc": loc_of(field), "msg": "not a file of this job", "type": "file"}],
    )


@contextlib.asynccontextmanager
async def call_folder(spool: Path) -> Any:
    """A private folder for one call's files, removed after it."""
    await asyncio.to_thread(spool.mkdir, parents=True, exist_ok=True)
    folder = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="call-", dir=spool))
    try:
        yield folder
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)
