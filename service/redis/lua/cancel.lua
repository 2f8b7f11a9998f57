-- cancel: cancel one queued job.
--
-- KEYS: its record key.
-- ARGV: now, done channel, the command to announce with (PUBLISH or SPUBLISH), the
--   caller's tenant ('' for the default one).
-- A job of another tenant is answered as gone, untouched. A queued job becomes 'canceled'
-- (it will never run) and is announced; any other status is left as it is.
-- Returns: {its status before ('' when gone), the record as it is now (fields and values)}.
local f = redis.call('HMGET', KEYS[1], 'status', 'tenant')
local status = f[1]
if status and (f[2] or '') ~= (ARGV[4] or '') then return {'', {}} end
if status == STATUS.QUEUED then
  redis.call('HSET', KEYS[1], 'status', STATUS.CANCELED, 'result', 'null', 'finished_at', ARGV[1])
  redis.call(ARGV[3], ARGV[2], KEYS[1])
end
return {status or '', redis.call('HGETALL', KEYS[1])}
