-- replay: dead-lettered jobs go back on the queue (an operator's admin call).
--
-- KEYS: the normal-priority stream, the dead-letter stream, the backlog hash (jobs queued
--   or running, by model), the high- and the low-priority streams, then one record key per
--   job.
-- ARGV: now, record TTL (s), then two per job: its dead-letter entry id, its prediction id.
-- Per job:
--   its dead-letter entry is still there (XDEL removes it) and its record is failed:
--     the record is queued again (attempts 0, requeued_at now: the job time limit counts
--     from here; result, error, the times of the last run and its Cancel-After removed:
--     the operator asks for it to run), a new entry is
--     added to the stream of its priority (with 'tp', its traceparent, when the record
--     keeps one: the run shows in the submitting request's trace) and the backlog
--     raised: 'replayed';
--   its dead-letter entry is still there but the record is gone (expired), or no longer
--     failed: the entry is removed, nothing queued: 'gone' or 'stale';
--   its dead-letter entry is gone (replayed or purged already): nothing: 'no'.
-- Returns: per job its answer.
-- Never: queues a job twice for one dead letter (the XDEL decides, so a replay repeated
--   or run by two callers at once queues it once), or touches a key it was not given.
local now, ttl = ARGV[1], ARGV[2]
local out = {}
local streams = {high = KEYS[4], low = KEYS[5]}
for i = 6, #KEYS do
  local key, at = KEYS[i], 3 + (i - 6) * 2
  local dead_entry, id = ARGV[at], ARGV[at + 1]
  if redis.call('XDEL', KEYS[2], dead_entry) == 0 then
    out[#out + 1] = REPLAYED.NO
  else
    local f = redis.call('HMGET', key, 'status', 'model', 'input', 'request_id', 'priority',
                         'traceparent')
    if not f[1] then
      out[#out + 1] = REPLAYED.GONE
    elseif f[1] ~= STATUS.FAILED then
      out[#out + 1] = REPLAYED.STALE
    else
      redis.call('HDEL', key, 'result', 'error', 'started_at', 'finished_at', 'dead_entry',
                 'cancel_at')
      redis.call('HSET', key, 'status', STATUS.QUEUED, 'attempts', 0, 'requeued_at', now)
      redis.call('EXPIRE', key, ttl)
      local fields = {'id', id, 'model', f[2], 'input', f[3], 'rid', f[4] or '', 'at', now}
      if f[6] then fields[#fields + 1] = 'tp'; fields[#fields + 1] = f[6] end
      redis.call('XADD', streams[f[5]] or KEYS[1], '*', unpack(fields))
      redis.call('HINCRBY', KEYS[3], f[2], 1)
      out[#out + 1] = REPLAYED.REPLAYED
    end
  end
end
return out
