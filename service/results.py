"""The job record store: create, mark processing, finish once, read. Records expire."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from .keys import Keys
from .models.base import Outcome
from .schemas import JobRecord, Status

# Marks a queued (or re-delivered, still unfinished) job as processing and answers the
# status it had before, so the worker can skip jobs that are already final or gone.
_MARK_PROCESSING = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' or status == 'processing' then
  redis.call('HSET', KEYS[1], 'status', 'processing', 'started_at', ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
end
return status
"""

# Writes the final record once: a record that is already done or failed keeps its value,
# and a record that expired is not recreated half-empty.
_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or status == 'done' or status == 'failed' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'result', ARGV[2], 'error', ARGV[3],
           'finished_at', ARGV[4])
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], 'error') end
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class ResultStore:
    def __init__(self, redis: Redis, keys: Keys, ttl_seconds: int) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl_seconds
        self._mark = redis.register_script(_MARK_PROCESSING)
        self._finish = redis.register_script(_FINISH)

    def stage_create(
        self, pipe: Pipeline, prediction_id: str, fields: Mapping[Any, bytes | str]
    ) -> None:
        """Adds the commands that write a new record to ``pipe`` (the caller executes it)."""
        key = self._keys.record(prediction_id)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, self._ttl)

    async def mark_processing(self, prediction_ids: list[str], now: float) -> list[Status | None]:
        """Marks each job processing in one round trip; answers each job's previous status."""
        pipe = self._redis.pipeline(transaction=False)
        for prediction_id in prediction_ids:
            await self._mark(keys=[self._keys.record(prediction_id)], args=[repr(now)], client=pipe)
        replies: list[Any] = await pipe.execute()
        return [None if reply is None else Status(reply.decode()) for reply in replies]

    async def stage_finish(
        self, pipe: Pipeline, prediction_id: str, outcome: Outcome, now: float
    ) -> None:
        """Adds the once-only final write of one job to ``pipe``."""
        status = Status.DONE if outcome.ok else Status.FAILED
        await self._finish(
            keys=[self._keys.record(prediction_id)],
            args=[status.value, outcome.payload, outcome.error, repr(now), self._ttl],
            client=pipe,
        )

    async def get(self, prediction_id: str) -> JobRecord | None:
        fields: Mapping[Any, Any] = await self._redis.hgetall(self._keys.record(prediction_id))
        if not fields:
            return None
        return JobRecord.from_redis(prediction_id, fields)
