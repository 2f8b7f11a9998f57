-- cancel: cancel one queued job, or ask a running streaming job to stop.
--
-- KEYS: its record key.
-- ARGV: now, the prefix of a replica's channel ('<base>:to:'), the command to announce with (PUBLISH or SPUBLISH), the
--   caller's tenant ('' for the default one), then the names of the models that stream.
-- A job of another tenant is answered as gone, untouched. A queued job becomes 'canceled'
-- (it will never run) and is told to the replicas that wait for it (tell.lua). A running job of a model that streams is asked to
-- stop ('stop' set: its worker stops it before its next chunk and ends it canceled). Any
-- other status is left as it is.
-- Returns: {its status before ('' when gone), the record as it is now (fields and values),
--   1 when it asked a running job to stop, else 0}.
--! include tell.lua
local f = redis.call('HMGET', KEYS[1], 'status', 'tenant', 'model', 'watchers')
local status = f[1]
if status and (f[2] or '') ~= (ARGV[4] or '') then return {'', {}, 0} end
local stopping = 0
if status == STATUS.QUEUED then
  redis.call('HSET', KEYS[1], 'status', STATUS.CANCELED, 'result', 'null', 'finished_at', ARGV[1])
  local ended = told()
  ended_for(ended, f[4], KEYS[1])
  send(ended, ARGV[3], ARGV[2], TOLD.ENDED)
elseif status == STATUS.PROCESSING then
  for i = 5, #ARGV do
    if ARGV[i] == f[3] then
      redis.call('HSET', KEYS[1], 'stop', '1')
      stopping = 1
    end
  end
end
return {status or '', redis.call('HGETALL', KEYS[1]), stopping}
