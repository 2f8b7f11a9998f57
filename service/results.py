"""The job record store: create, mark processing, finish once, read. Records expire."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from .keys import Keys
from .models.base import Outcome
from .schemas import JobRecord

# For each record key: mark a queued (or re-delivered, unfinished) job processing, and
# answer the status it had before ('' if the record is gone), so the worker can skip jobs
# that are already final or expired. One script call per batch.
_MARK_PROCESSING = """
local out = {}
for i, key in ipairs(KEYS) do
  local status = redis.call('HGET', key, 'status')
  if status == 'queued' or status == 'processing' then
    redis.call('HSET', key, 'status', 'processing', 'started_at', ARGV[1])
    redis.call('HINCRBY', key, 'attempts', 1)
  end
  out[i] = status or ''
end
return out
"""

# KEYS: the stream, then one record key per finished job.
# ARGV: group, finished time, ttl, then one outcome per job ('R' + result JSON when done,
# 'E' + error message when failed), then the entry ids to ack.
# Writes each final record once (a record already done or failed keeps its value; an
# expired one is not recreated half-empty), then acks, all in one atomic step.
_FINISH_AND_ACK = """
local group, now, ttl = ARGV[1], ARGV[2], ARGV[3]
local jobs = #KEYS - 1
for i = 1, jobs do
  local key = KEYS[i + 1]
  local status = redis.call('HGET', key, 'status')
  if status == 'queued' or status == 'processing' then
    local outcome = ARGV[3 + i]
    if string.sub(outcome, 1, 1) == 'R' then
      redis.call('HSET', key, 'status', 'done', 'result', string.sub(outcome, 2),
                 'finished_at', now)
    else
      redis.call('HSET', key, 'status', 'failed', 'result', 'null',
                 'error', string.sub(outcome, 2), 'finished_at', now)
    end
    redis.call('EXPIRE', key, ttl)
  end
end
if #ARGV > 3 + jobs then
  redis.call('XACK', KEYS[1], group, unpack(ARGV, 4 + jobs))
end
return jobs
"""

#: Prior statuses after which a job (re)runs: queued, or processing when re-delivered.
RUNNABLE = (b"queued", b"processing")


class ResultStore:
    def __init__(self, redis: Redis, keys: Keys, ttl_seconds: int) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl_seconds
        self._mark = redis.register_script(_MARK_PROCESSING)
        self._finish = redis.register_script(_FINISH_AND_ACK)

    async def mark_processing(self, prediction_ids: list[str], now: float) -> list[bytes]:
        """Marks each job processing in one round trip; answers each job's previous status
        (b"" when its record is gone). See RUNNABLE.
        """
        keys = [self._keys.record(p) for p in prediction_ids]
        return await self._mark(keys=keys, args=[repr(now)])

    async def finish_and_ack(
        self,
        finished: Sequence[tuple[str, Outcome]],
        entry_ids: Sequence[bytes],
        now: float,
    ) -> None:
        """Writes the final records of ``finished`` once and acks ``entry_ids``: one call."""
        keys = [self._keys.stream]
        args: list[Any] = [self._keys.group, repr(now), self._ttl]
        for prediction_id, outcome in finished:
            keys.append(self._keys.record(prediction_id))
            args.append(b"R" + outcome.payload if outcome.ok else "E" + outcome.error)
        args.extend(entry_ids)
        await self._finish(keys=keys, args=args)

    async def get(self, prediction_id: str) -> JobRecord | None:
        fields: Mapping[Any, Any] = await self._redis.hgetall(self._keys.record(prediction_id))
        if not fields:
            return None
        return JobRecord.from_redis(prediction_id, fields)
