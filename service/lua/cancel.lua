-- cancel: cancel one queued job.
--
-- KEYS: its record key.
-- ARGV: now, completions channel, the command to announce with (PUBLISH or SPUBLISH).
-- A queued job becomes 'canceled' (it will never run) and is announced; any other status
-- is left as it is.
-- Returns: {its status before ('' when gone), the record as it is now (fields and values)}.
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'result', 'null', 'finished_at', ARGV[1])
  redis.call(ARGV[3], ARGV[2], KEYS[1])
end
return {status or '', redis.call('HGETALL', KEYS[1])}
