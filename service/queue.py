"""The work queue: one Redis Stream read through one consumer group."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .coalesce import Coalescer
from .errors import IdempotencyConflict, QueueFull
from .keys import Keys

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: the job it carries and the stream id to acknowledge."""

    entry_id: bytes
    prediction_id: str
    model: str
    input_json: bytes
    request_id: str = ""
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to queue: its record starts as ``queued`` with these fields (and the time it
    was written as its ``created_at``)."""

    prediction_id: str
    model: str
    #: The input as JSON, written by the request's own handler: a value that cannot be
    #: written fails that request alone, never a submit call shared with others.
    input_json: bytes
    request_id: str = ""
    idempotency_key: str = ""
    body_digest: str = ""
    webhook: str = ""
    webhook_events: str = ""
    #: Someone on this replica waits for it (Prefer: wait): it may take the direct lane.
    waited: bool = False


class Lane(Protocol):
    """Runs, on the replica that submitted them, jobs the submit script delivered to
    ``consumer`` and marked processing (see `service.lane`)."""

    consumer: str

    def has_room(self) -> bool: ...

    def take(self, entries: list[Entry]) -> None: ...


def _entries(raw: list[Any]) -> list[Entry]:
    out = []
    for entry_id, fields in raw:
        if not fields:
            # Deleted while pending (XAUTOCLAIM/XREADGROUP show it with no fields).
            continue
        rid, at = fields.get(b"rid"), fields.get(b"at")
        out.append(
            Entry(
                entry_id,
                fields[b"id"].decode(),
                fields[b"model"].decode(),
                fields[b"input"],
                rid.decode() if rid else "",
                float(at) if at else 0.0,
            )
        )
    return out


def _deleted_ids(raw: list[Any]) -> list[bytes]:
    return [entry_id for entry_id, fields in raw if not fields]


def stream_entries(reply: Any) -> list[Any]:
    """The entries of the one stream in an XREADGROUP reply (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return next(iter(reply.values()))
    return reply[0][1]


# Whether every entry of the stream has been delivered to the group (its newest entry is
# not after the group's last-delivered-id); false when the stream or group is missing.
_NO_BACKLOG = """
local function no_backlog(stream, group)
  local groups = redis.pcall('XINFO', 'GROUPS', stream)
  if groups.err then return false end
  local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  for _, g in ipairs(groups) do
    local name, delivered
    for j = 1, #g, 2 do
      if g[j] == 'name' then name = g[j + 1] end
      if g[j] == 'last-delivered-id' then delivered = g[j + 1] end
    end
    if name == group then
      if not newest then return true end
      local nm, ns = string.match(newest[1], '(%d+)-(%d+)')
      local dm, ds = string.match(delivered, '(%d+)-(%d+)')
      nm, ns, dm, ds = tonumber(nm), tonumber(ns), tonumber(dm), tonumber(ds)
      return nm < dm or (nm == dm and ns <= ds)
    end
  end
  return false
end
"""

# KEYS: the stream, then one record key per job.
# ARGV: record TTL, queue limit (0: none), '1' when the jobs are queued all or none (a
# bulk submit), the created time of every job, then per job: prediction id, model, input
# (JSON), request id, and its extras: '' or a JSON array [idempotency key ('' if none),
# body digest, webhook URL ('' if none), webhook events ('done,failed')]. (Five arguments
# a job, most often with no extras: packing and parsing arguments is the client's main
# cost per queued job.)
# Per job, in order: a record that already exists (a retry of this very call) answers
# 'ok' and is left as it is; a known idempotency key answers 'dup:<its id>' (same body) or
# 'conflict' (another body); a full queue answers 'full'; otherwise the job record
# (status queued), its stream entry and its idempotency key are written and it answers
# 'ok'. One atomic call for many jobs; nothing is written for a job that is not 'ok', and
# with '1' (a bulk submit) nothing at all unless every job is new and fits.
# When every job is 'ok' the answer is just their number.
# With three more arguments (group, lane consumer, started channel) and no entry waiting
# undelivered, the jobs are written as processing (attempts 1) and delivered to the lane
# consumer in the same call, and the answer is {that count or the list, entry ids}.
_SUBMIT = (
    _NO_BACKLOG
    + """
local ttl, limit, whole, now = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1', ARGV[4]
local out, all_ok = {}, true
if whole then
  -- All or none: if any job's idempotency key is known (a repeated bulk submit), nothing
  -- is written and each job answers its earlier id, or 'conflict' for another body.
  local known_any, answers = false, {}
  for i = 2, #KEYS do
    local a = 5 + (i - 2) * 5
    answers[i - 1] = 'conflict'
    if ARGV[a + 4] ~= '' then
      local extras = cjson.decode(ARGV[a + 4])
      if extras[1] ~= '' then
        local known = redis.call('GET', extras[1])
        if known then
          known_any = true
          local sep = string.find(known, '|', 1, true)
          if string.sub(known, sep + 1) == extras[2] then
            answers[i - 1] = 'dup:' .. string.sub(known, 1, sep - 1)
          end
        end
      end
    end
  end
  if known_any then return answers end
end
if whole and limit > 0 and redis.call('XLEN', KEYS[1]) + #KEYS - 1 > limit then
  for i = 2, #KEYS do out[i - 1] = 'full' end
  return out
end
local lane = #ARGV > 4 + 5 * (#KEYS - 1)
local group, consumer, started_channel
if lane then
  local b = 5 + 5 * (#KEYS - 1)
  group, consumer, started_channel = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  lane = no_backlog(KEYS[1], group)
end
local entry_ids, started = {}, {}
for i = 2, #KEYS do
  local a = 5 + (i - 2) * 5
  local id, idem, digest, webhook, events = ARGV[a], '', '', '', ''
  if ARGV[a + 4] ~= '' then
    local extras = cjson.decode(ARGV[a + 4])
    idem, digest, webhook, events = extras[1], extras[2], extras[3], extras[4]
  end
  local known = false
  if idem ~= '' then known = redis.call('GET', idem) end
  if redis.call('EXISTS', KEYS[i]) == 1 then
    -- The same job again: a client retry of a call that did land (ids are random, so
    -- only a retry names a record that exists). It is not written or queued twice.
    out[i - 1] = 'ok'
  elseif known then
    local sep = string.find(known, '|', 1, true)
    if string.sub(known, sep + 1) == digest then
      out[i - 1] = 'dup:' .. string.sub(known, 1, sep - 1)
    else
      out[i - 1] = 'conflict'
    end
    all_ok = false
  elseif limit > 0 and redis.call('XLEN', KEYS[1]) >= limit then
    out[i - 1] = 'full'
    all_ok = false
  else
    if lane then
      redis.call('HSET', KEYS[i], 'status', 'processing', 'model', ARGV[a + 1],
                 'input', ARGV[a + 2], 'created_at', now, 'started_at', now, 'attempts', 1,
                 'request_id', ARGV[a + 3])
      started[#started + 1] = KEYS[i]
    else
      redis.call('HSET', KEYS[i], 'status', 'queued', 'model', ARGV[a + 1],
                 'input', ARGV[a + 2], 'created_at', now, 'attempts', 0,
                 'request_id', ARGV[a + 3])
    end
    if webhook ~= '' then
      redis.call('HSET', KEYS[i], 'webhook', webhook, 'webhook_events', events)
    end
    redis.call('EXPIRE', KEYS[i], ttl)
    entry_ids[i - 1] = redis.call('XADD', KEYS[1], '*', 'id', id, 'model', ARGV[a + 1],
                                  'input', ARGV[a + 2], 'rid', ARGV[a + 3], 'at', now)
    if idem ~= '' then redis.call('SET', idem, id .. '|' .. digest, 'EX', ttl) end
    out[i - 1] = 'ok'
  end
  entry_ids[i - 1] = entry_ids[i - 1] or ''
end
if lane and #started > 0 then
  -- Nothing was waiting undelivered, so the entries just added are exactly what the group
  -- hands out next: to the lane's consumer, already marked processing above.
  redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', #started,
             'STREAMS', KEYS[1], '>')
  redis.call('PUBLISH', started_channel, table.concat(started, ','))
  if all_ok then return {#KEYS - 1, entry_ids} end
  return {out, entry_ids}
end
if all_ok then return #KEYS - 1 end
return out
"""
)


class JobQueue:
    def __init__(self, redis: Redis, keys: Keys, ttl_seconds: int, max_queue: int = 0) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl_seconds
        self._max_queue = max_queue
        #: Set while this replica's workers run: waited-for jobs may be run here at once.
        self.lane: Lane | None = None
        self._submit_script = redis.register_script(_SUBMIT)
        self._submits: Coalescer[NewJob, str] = Coalescer(self._write)

    async def ensure_group(self) -> None:
        """Creates the stream and group if missing; from id 0 so no queued job is skipped."""
        try:
            await self._redis.xgroup_create(
                self._keys.stream, self._keys.group, id="0", mkstream=True
            )
            log.info("created consumer group %s on stream %s", self._keys.group, self._keys.stream)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def submit(self, job: NewJob) -> str:
        """Writes the record and queues the job; answers the prediction id once both are in
        Redis (an earlier job's id for a repeated idempotency key). QueueFull (429) when
        MAX_QUEUE jobs wait; IdempotencyConflict (409) for a reused key with another body.

        Submits of concurrent requests share one script call (one round trip, atomic), so
        each job's record and stream entry are written together, and a busy server makes
        few round trips.
        """
        reply = await self._submits.add(job)
        if reply == "ok":
            return job.prediction_id
        if reply.startswith("dup:"):
            return reply.removeprefix("dup:")
        if reply == "full":
            raise QueueFull(f"The queue holds {self._max_queue} jobs; try again shortly.")
        raise IdempotencyConflict("This Idempotency-Key was used with a different request body.")

    async def submit_all(self, jobs: list[NewJob]) -> list[str]:
        """Queues every job, or none when they do not all fit under MAX_QUEUE (QueueFull):
        one script call, one round trip. Answers the prediction ids in order (the earlier
        ids when the jobs carry idempotency keys used before for the same body)."""
        replies = await self._write(jobs, whole=True)
        if any(r == "full" for r in replies):
            raise QueueFull(f"The queue cannot take {len(jobs)} more jobs; try again shortly.")
        if any(r == "conflict" for r in replies):
            raise IdempotencyConflict(
                "This Idempotency-Key was used with a different request body."
            )
        return [
            r.removeprefix("dup:") if r.startswith("dup:") else job.prediction_id
            for job, r in zip(jobs, replies, strict=True)
        ]

    async def _write(self, jobs: list[NewJob], whole: bool = False) -> list[str]:
        keys = [self._keys.stream]
        now = time.time()
        args: list[Any] = [self._ttl, self._max_queue, "1" if whole else "0", repr(now)]
        for job in jobs:
            keys.append(self._keys.record(job.prediction_id))
            args += (job.prediction_id, job.model, job.input_json, job.request_id)
            if job.idempotency_key or job.webhook:
                args.append(self._extras(job))
            else:
                args.append("")
        # A flush with a job someone here waits for goes to the lane whole (the others
        # would be run by a worker of some replica just as soon).
        lane = self.lane
        if lane is not None and not whole and lane.has_room() and any(j.waited for j in jobs):
            args += (self._keys.group, lane.consumer, self._keys.started)
        replies: Any = await self._submit_script(keys=keys, args=args)
        if isinstance(replies, int):  # every job queued
            return ["ok"] * len(jobs)
        if len(replies) == 2 and isinstance(replies[1], list):  # the lane took them
            replies, entry_ids = replies
            if lane is not None:
                lane.take(
                    [
                        Entry(entry_id, j.prediction_id, j.model, j.input_json, j.request_id, now)
                        for j, entry_id in zip(jobs, entry_ids, strict=True)
                        if entry_id
                    ]
                )
            if isinstance(replies, int):
                return ["ok"] * len(jobs)
        return [r.decode() for r in replies]

    def _extras(self, job: NewJob) -> bytes:
        key = self._keys.idempotency(job.idempotency_key) if job.idempotency_key else ""
        return orjson.dumps([key, job.body_digest, job.webhook, job.webhook_events])

    async def read(
        self, consumer: str, count: int, block_ms: int | None, *, own_pending: bool = False
    ) -> list[Entry]:
        """New entries for ``consumer`` (or its own unacked ones with ``own_pending``)."""
        reply = await self._redis.xreadgroup(
            self._keys.group,
            consumer,
            {self._keys.stream: "0" if own_pending else ">"},
            count=count,
            block=None if own_pending else block_ms,
        )
        raw = stream_entries(reply)
        gone = _deleted_ids(raw)
        if gone:
            await self._redis.xack(self._keys.stream, self._keys.group, *gone)
        return _entries(raw)

    async def heartbeat(self, consumer: str, entry_ids: list[bytes]) -> None:
        """Resets the idle time of ``consumer``'s in-flight entries (XCLAIM to itself), so
        a long job is not reclaimed by another replica while it still runs.
        """
        ids: list[Any] = list(entry_ids)
        if ids:
            await self._redis.xclaim(
                self._keys.stream, self._keys.group, consumer, 0, ids, justid=True
            )

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Takes over entries other consumers left idle longer than ``min_idle_ms``.

        XAUTOCLAIM answers [cursor, entries] on Redis 6.2 and [cursor, entries, deleted ids]
        on 7.x; the cursor is followed until ``count`` entries are found or it returns to 0.
        """
        claimed: list[Entry] = []
        cursor: Any = "0-0"
        while len(claimed) < count:
            reply = await self._redis.xautoclaim(
                self._keys.stream,
                self._keys.group,
                consumer,
                min_idle_ms,
                start_id=cursor,
                count=count - len(claimed),
            )
            cursor, raw = reply[0], reply[1]
            gone = _deleted_ids(raw)
            if gone:
                await self._redis.xack(self._keys.stream, self._keys.group, *gone)
            claimed.extend(_entries(raw))
            if cursor in (b"0-0", "0-0"):
                break
        if claimed:
            log.info("%s reclaimed %d idle entries", consumer, len(claimed))
        return claimed
