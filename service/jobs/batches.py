"""Batches of the OpenAI-compatible routes, kept in Redis: uploaded files' details (their
bytes in the blob store), each batch's details, what each line of its input became (the
prediction ids of its queued jobs, or why it was refused), and each ended line's answer.

A batch is moved on by whichever replica gets to it first (a lock per batch): the lines
are taken in order, from a cursor, as far as every job of a line has ended; each ended
line's answer is written under its number (so a step done twice writes the same thing),
and once every line has ended the answers are written, in order, as the output and error
files. Every replica moves the batches not ended yet on every few seconds, and a read of
a batch moves it on first, so a client that polls sees it end at once."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from service.blobs import BlobStore
from service.job import JobRecord
from service.redis.keys import Names

log = logging.getLogger(__name__)

#: Lines read at a time; pages of answered lines skipped in one move at most; pages
#: scanned for lines that ended, in one move; job records read at once.
PAGE = 200
STEPS_PER_MOVE = 50
SCANS_PER_MOVE = 10
READ_AT_ONCE = 500
#: How long one replica holds a batch while it moves it on.
LOCK_SECONDS = 60
#: How the ids of files and of batches begin (they share one key space in Redis).
FILE_PREFIX, BATCH_PREFIX = "file-", "batch_"
#: The statuses a batch ends in.
ENDED = frozenset({"completed", "cancelled", "expired", "failed"})

#: How an ended line is answered: (whether it succeeded, its line in the output or error
#: file). Given the line's entry and its jobs' records (None: expired).
Shape = Callable[[dict[str, Any], Sequence[JobRecord | None]], tuple[bool, bytes]]
#: Reads the records of many jobs.
Read = Callable[[Sequence[str]], Awaitable[Sequence[JobRecord | None]]]
#: Cancels one queued job of a tenant.
Cancel = Callable[[str, str], Awaitable[Any]]


def content_key(file_id: str) -> str:
    """Where an uploaded file's bytes are in the blob store."""
    return f"{file_id}/content"


def _text(raw: Any) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


class Batches:
    def __init__(self, redis: Redis, names: Names, store: BlobStore, ttl: int) -> None:
        self._redis = redis
        self._names = names
        self.store = store
        #: How long files and batches are kept (BATCH_TTL_SECONDS).
        self.ttl = ttl

    # -- files ----------------------------------------------------------------------------
    async def keep_file(self, file_id: str, details: dict[Any, Any]) -> None:
        """Keeps a stored file's details for BATCH_TTL_SECONDS; its bytes go then too (the
        sweep of job files, `service.jobs.files`, removes them when due)."""
        key = self._names.openai(file_id)
        await self._redis.zadd(self._names.files, {file_id: time.time() + self.ttl + 10})
        await self._redis.hset(key, mapping=details)
        await self._redis.expire(key, self.ttl)

    async def file(self, file_id: str) -> dict[str, str] | None:
        """A file's details (None: no such file, or not a file)."""
        if not file_id.startswith(FILE_PREFIX):
            return None
        raw = await self._redis.hgetall(self._names.openai(file_id))
        return _text(raw) if raw and b"purpose" in raw else None

    async def remove_file(self, file_id: str) -> None:
        await self._redis.delete(self._names.openai(file_id))
        await self.store.delete(f"{file_id}/")
        await self._redis.zrem(self._names.files, file_id)

    # -- batches --------------------------------------------------------------------------
    async def create(self, batch_id: str, details: dict[str, Any], lines: list[bytes]) -> None:
        """Keeps a new batch (its jobs queued already) and what each line became."""
        names = self._names
        key, listed = names.openai(batch_id), names.batch_lines(batch_id)
        for start in range(0, len(lines), PAGE):
            await self._redis.rpush(listed, *lines[start : start + PAGE])
        await self._redis.expire(listed, self.ttl)
        mapping: dict[Any, Any] = {**details, "total": len(lines), "cursor": 0}
        await self._redis.hset(key, mapping=mapping)
        await self._redis.expire(key, self.ttl)
        await self._redis.zadd(names.batches, {batch_id: float(details["created_at"])})

    async def get(self, batch_id: str) -> dict[str, str] | None:
        """A batch's details (None: no such batch, or not a batch)."""
        if not batch_id.startswith(BATCH_PREFIX):
            return None
        raw = await self._redis.hgetall(self._names.openai(batch_id))
        return _text(raw) if raw and b"endpoint" in raw else None

    async def counts(self, batch_id: str, details: dict[str, str] | None = None) -> tuple[int, int]:
        """Lines ended so far: (succeeded, failed); kept as "done" and "failed" once the
        batch ended (its answers are in its files then). ``details``: read already."""
        details = details if details is not None else await self.get(batch_id) or {}
        if "done" in details:
            return int(details["done"]), int(details["failed"])
        names = self._names
        done = await self._redis.hlen(names.batch_output(batch_id))
        failed = await self._redis.hlen(names.batch_errors(batch_id))
        return done, failed

    async def set_status(self, batch_id: str, status: str, **more: Any) -> None:
        at = f"{status}_at" if status != "cancelling" else "cancelling_at"
        mapping: dict[Any, Any] = {"status": status, at: int(time.time()), **more}
        await self._redis.hset(self._names.openai(batch_id), mapping=mapping)

    async def entries(self, batch_id: str, start: int, count: int) -> list[dict[str, Any]]:
        raw = await self._redis.lrange(self._names.batch_lines(batch_id), start, start + count - 1)
        return [orjson.loads(item) for item in raw]

    async def cancel_jobs(self, batch_id: str, tenant: str, cancel: Cancel) -> None:
        """Cancels every job of the batch still queued (those running end as they will)."""
        total = int((await self.get(batch_id) or {}).get("total", 0))
        for start in range(0, total, PAGE):
            entries = await self.entries(batch_id, start, PAGE)
            ids = [p for entry in entries for p in entry.get("p", ())]
            await asyncio.gather(*(cancel(p, tenant) for p in ids))

    async def move(self, batch_id: str, read: Read, shape: Shape) -> dict[str, str] | None:
        """Moves the batch on as far as its jobs have ended (unless another replica is on
        it); its details after."""
        details = await self.get(batch_id)
        if details is None:
            await self._redis.zrem(self._names.batches, batch_id)
            return None
        if details["status"] in ENDED:
            return details
        lock, token = self._names.batch_lock(batch_id), secrets.token_hex(8)
        if not await self._redis.set(lock, token, nx=True, ex=LOCK_SECONDS):
            return details
        try:
            key = self._names.openai(batch_id)
            cursor, total = int(details["cursor"]), int(details["total"])
            scan = int(details.get("scan") or cursor)
            for _ in range(SCANS_PER_MOVE):
                # The lines answered from the cursor on; then a page of those not answered
                # yet, wherever the scan is (a line that ended is answered while its record
                # is there, whatever the lines before it are doing).
                cursor = await self._answered_from(batch_id, cursor, total)
                if cursor >= total or not await self._still_mine(lock, token):
                    break
                start = scan if cursor < scan < total else cursor
                await self._step(batch_id, start, read, shape)
                scan = start + PAGE
            await self._redis.hset(key, mapping={"cursor": cursor, "scan": scan})
            if cursor >= total and await self._still_mine(lock, token):
                await self._finish(batch_id, total)
        finally:
            if await self._redis.get(lock) == token.encode():
                await self._redis.delete(lock)
        return await self.get(batch_id)

    async def _still_mine(self, lock: str, token: str) -> bool:
        """Whether this replica still holds the batch (its lock then runs LOCK_SECONDS more)."""
        if await self._redis.get(lock) != token.encode():
            return False
        await self._redis.expire(lock, LOCK_SECONDS)
        return True

    async def _answered(self, batch_id: str, numbers: list[int]) -> list[bool]:
        names = self._names
        done: list[Any] = await self._redis.hmget(names.batch_output(batch_id), numbers)
        failed: list[Any] = await self._redis.hmget(names.batch_errors(batch_id), numbers)
        return [a is not None or b is not None for a, b in zip(done, failed, strict=True)]

    async def _answered_from(self, batch_id: str, cursor: int, total: int) -> int:
        """The first line from ``cursor`` on that is not answered yet (``total``: none)."""
        for _ in range(STEPS_PER_MOVE):
            numbers = list(range(cursor, min(total, cursor + PAGE)))
            if not numbers:
                break
            answered = await self._answered(batch_id, numbers)
            if not all(answered):
                return cursor + answered.index(False)
            cursor += len(numbers)
        return cursor

    async def _step(self, batch_id: str, start: int, read: Read, shape: Shape) -> None:
        """Answers the lines of the page at ``start`` whose jobs have all ended."""
        entries = await self.entries(batch_id, start, PAGE)
        numbers = list(range(start, start + len(entries)))
        answered = await self._answered(batch_id, numbers) if numbers else []
        waiting = [(n, e) for n, e, a in zip(numbers, entries, answered, strict=True) if not a]
        ids = [p for _, entry in waiting for p in entry.get("p", ())]
        records: list[JobRecord | None] = []
        for at in range(0, len(ids), READ_AT_ONCE):
            records.extend(await read(ids[at : at + READ_AT_ONCE]))
        output: dict[Any, Any] = {}
        errors: dict[Any, Any] = {}
        at = 0
        for number, entry in waiting:
            mine = records[at : at + len(entry.get("p", ()))]
            at += len(mine)
            if any(r is not None and not r.status.final for r in mine):
                continue  # not ended yet
            ok, line = shape({**entry, "n": number, "b": batch_id}, mine)
            (output if ok else errors)[number] = line
        names = self._names
        for key, answers in (
            (names.batch_output(batch_id), output),
            (names.batch_errors(batch_id), errors),
        ):
            if answers:
                await self._redis.hset(key, mapping=answers)
                await self._redis.expire(key, self.ttl)

    async def _finish(self, batch_id: str, total: int) -> None:
        """Every line has ended: the output and error files, in line order, and the end
        (cancelled when it was asked to stop meanwhile)."""
        details = await self.get(batch_id)
        if details is None or details["status"] in ENDED:
            return
        made: dict[str, Any] = {}
        for part, field in (("output", "output_file_id"), ("errors", "error_file_id")):
            file_id = await self._write_file(batch_id, part, total, details["tenant"])
            if file_id:
                made[field] = file_id
        done, failed = await self.counts(batch_id)
        status = (await self.get(batch_id) or details)["status"]
        ended = "cancelled" if status == "cancelling" else "completed"
        await self.set_status(batch_id, ended, done=done, failed=failed, **made)
        names = self._names
        await self._redis.delete(names.batch_output(batch_id), names.batch_errors(batch_id))
        await self._redis.zrem(names.batches, batch_id)

    async def _write_file(self, batch_id: str, part: str, total: int, tenant: str) -> str:
        """Writes one part's answers to a new file in the store: its id ("" for none)."""
        key = (self._names.batch_output if part == "output" else self._names.batch_errors)(batch_id)
        if not await self._redis.hlen(key):
            return ""
        file_id = (
            "file-" + batch_id.removeprefix("batch_") + ("-out" if part == "output" else "-err")
        )
        spool = await asyncio.to_thread(_spool)
        size = 0
        try:
            with await asyncio.to_thread(open, spool, "wb") as out:
                for start in range(0, total, PAGE):
                    numbers = list(range(start, min(total, start + PAGE)))
                    got: list[Any] = await self._redis.hmget(key, numbers)
                    lines = [line for line in got if line]
                    if lines:
                        data = b"".join(line + b"\n" for line in lines)
                        size += len(data)
                        await asyncio.to_thread(out.write, data)
            await self.store.put(content_key(file_id), spool)
        finally:
            await asyncio.to_thread(spool.unlink, True)
        await self.keep_file(
            file_id,
            {
                "tenant": tenant,
                "filename": f"{batch_id}_{part}.jsonl",
                "bytes": size,
                "purpose": "batch_output",
                "created_at": int(time.time()),
            },
        )
        return file_id

    async def pending(self, start: int = 0, most: int = 50) -> list[str]:
        """Batches not ended yet, the oldest first, from the ``start``-th."""
        raw = await self._redis.zrange(self._names.batches, start, start + most - 1)
        return [r.decode() if isinstance(r, bytes) else str(r) for r in raw]

    async def move_all_forever(self, every: float, read: Read, shape: Shape) -> None:
        """Moves every batch not ended on, every ``every`` seconds (on every replica)."""
        while True:
            try:
                start = 0
                while batch_ids := await self.pending(start):
                    for batch_id in batch_ids:
                        await self.move(batch_id, read, shape)
                    start += len(batch_ids)
            except Exception as exc:
                log.warning("moving batches on failed (%s); trying again in %g s", exc, every)
            await asyncio.sleep(every)


def _spool() -> Path:
    """A new empty file to write one output file to, before it is stored."""
    handle, name = tempfile.mkstemp(prefix="batch-", suffix=".jsonl")
    os.close(handle)
    return Path(name)
