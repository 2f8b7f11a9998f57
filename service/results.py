"""The job record store: create, mark processing, finish once, read. Records expire."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from redis.asyncio import Redis

from .coalesce import Coalescer
from .keys import Keys
from .models.base import Outcome
from .queue import Entry
from .schemas import JobRecord, Status

# KEYS: the dead-letter stream, then one record key per job of the batch.
# ARGV: now, TTL, max deliveries, job timeout (0: none), completions channel, started
# channel, then per job its stream entry id.
# For each job: its status before ('' if the record is gone), after moving it on:
# - queued/processing and past its deadline (from submission): failed "timed out";
#   answers 'expired';
# - queued/processing and already started MAX_DELIVERIES times: failed "gave up after N
#   deliveries", and a dead-letter entry with the reason; answers 'dead';
# - otherwise queued/processing: now processing, attempts + 1; answers the old status;
# - done/failed/canceled (a re-delivery, or canceled while queued): untouched.
# Every job it ends is announced on the completions channel, every job it starts on the
# started channel. One script call per batch.
_MARK_PROCESSING = """
local now, ttl = tonumber(ARGV[1]), ARGV[2]
local max_deliveries, timeout = tonumber(ARGV[3]), tonumber(ARGV[4])
local out, ended, started = {}, {}, {}
for i = 2, #KEYS do
  local key = KEYS[i]
  local f = redis.call('HMGET', key, 'status', 'attempts', 'created_at')
  local status = f[1]
  if status == 'queued' or status == 'processing' then
    local attempts = tonumber(f[2]) or 0
    if timeout > 0 and now - (tonumber(f[3]) or now) > timeout then
      redis.call('HSET', key, 'status', 'failed', 'result', 'null',
                 'error', 'timed out: not finished within ' .. ARGV[4] .. ' s of submission',
                 'finished_at', ARGV[1])
      redis.call('EXPIRE', key, ttl)
      status = 'expired'
      ended[#ended + 1] = key
    elseif attempts >= max_deliveries then
      local reason = 'gave up after ' .. attempts .. ' deliveries'
      redis.call('HSET', key, 'status', 'failed', 'result', 'null', 'error', reason,
                 'finished_at', ARGV[1])
      redis.call('EXPIRE', key, ttl)
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', 100000, '*', 'key', key,
                 'entry', ARGV[5 + i], 'reason', reason, 'at', ARGV[1])
      status = 'dead'
      ended[#ended + 1] = key
    else
      redis.call('HSET', key, 'status', 'processing', 'started_at', ARGV[1])
      redis.call('HINCRBY', key, 'attempts', 1)
      started[#started + 1] = key
    end
  end
  out[i - 1] = status or ''
end
if #ended > 0 then redis.call('PUBLISH', ARGV[5], table.concat(ended, ',')) end
if #started > 0 then redis.call('PUBLISH', ARGV[6], table.concat(started, ',')) end
return out
"""

# KEYS: the stream, then one record key per finished job.
# ARGV: group, finished time, ttl, completions channel, webhook stream, one flag per job
# ('1': answer its record; '' for no records at all), then one outcome per job ('R' +
# result JSON when done, 'E' + error message when failed), then the entry ids to ack. A
# job with a webhook for its final status gets a delivery queued with it.
# Writes each final record once (a record already done, failed or canceled keeps its
# value; an expired one is not recreated half-empty), announces the jobs it finished on
# the completions channel, then acks and deletes the entries, all in one atomic step.
# Answers, per flagged job (empty for the others): when this call wrote its final record,
# '=' and the fields the caller does not hold (started_at, attempts, created_at, webhook),
# so it can build the record without reading it back; otherwise the record as it is (fields
# and values; empty when it is gone). When no job is flagged: the number of jobs.
_FINISH_AND_ACK = """
local group, now, ttl = ARGV[1], ARGV[2], ARGV[3]
local jobs, want = #KEYS - 1, ARGV[6]
local ended, out = {}, {}
for i = 1, jobs do
  local key = KEYS[i + 1]
  local status = redis.call('HGET', key, 'status')
  local written, f = status == 'queued' or status == 'processing', nil
  if written then
    local outcome = ARGV[6 + i]
    local final = 'failed'
    if string.sub(outcome, 1, 1) == 'R' then
      final = 'done'
      redis.call('HSET', key, 'status', 'done', 'result', string.sub(outcome, 2),
                 'finished_at', now)
    else
      redis.call('HSET', key, 'status', 'failed', 'result', 'null',
                 'error', string.sub(outcome, 2), 'finished_at', now)
    end
    redis.call('EXPIRE', key, ttl)
    ended[#ended + 1] = key
    f = redis.call('HMGET', key, 'webhook', 'webhook_events', 'started_at', 'attempts',
                   'created_at')
    if f[1] and string.find(',' .. (f[2] or '') .. ',', ',' .. final .. ',', 1, true) then
      redis.call('XADD', ARGV[5], '*', 'key', key)
    end
  end
  if want ~= '' then
    out[i] = {}
    if string.sub(want, i, i) == '1' then
      if written then
        out[i] = {'=', f[3], f[4], f[5], f[1]}
      else
        out[i] = redis.call('HGETALL', key)
      end
    end
  end
end
if #ended > 0 then redis.call('PUBLISH', ARGV[4], table.concat(ended, ',')) end
if #ARGV > 6 + jobs then
  redis.call('XACK', KEYS[1], group, unpack(ARGV, 7 + jobs))
  -- Acked entries are done with: deleting them keeps the stream as long as the work
  -- still waiting or running, and never touches an undelivered or unacked entry.
  redis.call('XDEL', KEYS[1], unpack(ARGV, 7 + jobs))
end
if want == '' then return jobs end
return out
"""

# KEYS: one record key. ARGV: now, completions channel.
# Cancels a queued job (it will never run); any other status is left as it is. Answers
# the status it had ('' when the record is gone) and the record as it is now.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'result', 'null', 'finished_at', ARGV[1])
  redis.call('PUBLISH', ARGV[2], KEYS[1])
end
return {status or '', redis.call('HGETALL', KEYS[1])}
"""

# KEYS: record keys. Answers each record's fields and values (empty when it is gone).
# Concurrent reads (waiters woken by one announcement, busy GETs) share one call.
_READ = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGETALL', key) end
return out
"""

#: Prior statuses after which a job (re)runs: queued, or processing when re-delivered.
RUNNABLE = (b"queued", b"processing")


class ResultStore:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        ttl_seconds: int,
        max_deliveries: int = 3,
        job_timeout: float = 0.0,
        *,
        finish_under_oom: bool = False,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl_seconds
        self._max_deliveries = max_deliveries
        self._job_timeout = job_timeout
        # Redis 7 can let the scripts that move accepted work on run while it is out of
        # memory: finishing a job deletes its stream entry, so the queue drains and memory
        # frees, while new submits are refused (503). Redis 6.2 has no script flags.
        flags = "#!lua flags=allow-oom\n" if finish_under_oom else ""
        self._mark = redis.register_script(flags + _MARK_PROCESSING)
        self._finish = redis.register_script(flags + _FINISH_AND_ACK)
        self._cancel = redis.register_script(_CANCEL)
        self._read = redis.register_script(_READ)
        self._reads: Coalescer[str, JobRecord | None] = Coalescer(self._get_many)

    async def mark_processing(self, jobs: Sequence[tuple[str, bytes]], now: float) -> list[bytes]:
        """Moves each (prediction id, entry id) on in one round trip: processing, or failed
        for a deadline passed or too many deliveries. Answers each job's previous status,
        b"expired" or b"dead" (b"" when its record is gone). See RUNNABLE.
        """
        keys = [self._keys.dead_letters] + [self._keys.record(p) for p, _ in jobs]
        args: list[Any] = [
            repr(now),
            self._ttl,
            self._max_deliveries,
            self._job_timeout,
            self._keys.completions,
            self._keys.started,
        ]
        args.extend(entry_id for _, entry_id in jobs)
        return await self._mark(keys=keys, args=args)

    async def finish_and_ack(
        self,
        finished: Sequence[tuple[Entry, Outcome]],
        entry_ids: Sequence[bytes],
        now: float,
        wanted: Sequence[bool] = (),
    ) -> list[JobRecord | None]:
        """Writes the final records of ``finished`` once and acks ``entry_ids``: one call.
        Answers the records of the jobs ``wanted`` flags (None for the others); one that
        this call ended is built from what the worker holds, not read back."""
        keys = [self._keys.stream]
        args: list[Any] = [
            self._keys.group,
            repr(now),
            self._ttl,
            self._keys.completions,
            self._keys.webhooks,
            "".join("1" if w else "0" for w in wanted) if any(wanted) else "",
        ]
        for entry, outcome in finished:
            keys.append(self._keys.record(entry.prediction_id))
            args.append(b"R" + outcome.payload if outcome.ok else "E" + outcome.error)
        args.extend(entry_ids)
        replies = await self._finish(keys=keys, args=args)
        if not any(wanted):
            return [None] * len(finished)
        return [
            _ended_record(e, o, now, flat) if flat else None
            for (e, o), flat in zip(finished, replies, strict=True)
        ]

    async def cancel(self, prediction_id: str, now: float) -> tuple[str, JobRecord | None]:
        """Cancels the job if it is still queued; answers the status it had ('' if none)
        and the record as it is now, in one round trip."""
        before, flat = await self._cancel(
            keys=[self._keys.record(prediction_id)], args=[repr(now), self._keys.completions]
        )
        record = JobRecord.from_redis(prediction_id, _pairs(flat)) if flat else None
        return before.decode(), record

    async def get(self, prediction_id: str) -> JobRecord | None:
        """The job's record (None when unknown or expired)."""
        return await self._reads.add(prediction_id)

    async def _get_many(self, prediction_ids: list[str]) -> list[JobRecord | None]:
        replies = await self._read(keys=[self._keys.record(p) for p in prediction_ids])
        return [
            JobRecord.from_redis(p, _pairs(flat)) if flat else None
            for p, flat in zip(prediction_ids, replies, strict=True)
        ]


def _ended_record(entry: Entry, outcome: Outcome, now: float, flat: list[Any]) -> JobRecord:
    """The record the finish script answered for one job: read back whole, or (marked '=')
    written by that call, so all but four fields are what the worker sent it. Half the
    cost of parsing the whole hash, on every Prefer: wait answer."""
    if flat[0] != b"=":
        return JobRecord.from_redis(entry.prediction_id, _pairs(flat))
    _, started_at, attempts, created_at, webhook = flat
    return JobRecord(
        prediction_id=entry.prediction_id,
        status=Status.DONE if outcome.ok else Status.FAILED,
        model=entry.model,
        input=orjson.loads(entry.input_json),
        created_at=float(created_at),
        started_at=None if started_at is None else float(started_at),
        finished_at=now,
        attempts=int(attempts or 0),
        result=orjson.loads(outcome.payload) if outcome.ok else None,
        error=None if outcome.ok else outcome.error,
        request_id=entry.request_id or None,
        webhook=webhook.decode() if webhook else None,
    )


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    """A hash from the flat field, value, field, value... list a script answers."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
