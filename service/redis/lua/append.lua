-- append: chunks of running streaming jobs, kept as they come (one call for the chunks of
-- the jobs of one partition that came together).
--
-- KEYS: the webhook deliveries stream, then two per job: its record, its chunks stream.
-- ARGV: now, the chunks' TTL (s), the command to announce with (PUBLISH, or SPUBLISH on a
--   cluster), the prefix of a replica's channel ('<base>:to:'), the least time between two
--   'output' webhook deliveries of a job (s), the appending replica (it tells its own
--   followers itself), then per job: the number of its first chunk here, how many
--   chunks, then its chunks (JSON).
-- Per job whose record is processing and does not ask it to stop ('stop'):
--   each chunk is added to its stream with the id 0-<its number> (field 'c'), so that a
--   reader resumes after any number it saw (a first chunk numbered 1 starts the stream
--   over: a job run again after its replica died); the stream expires after the TTL;
--   every replica in its record's watchers but the appending one is told (tell.lua);
--   and when
--   its webhook events name 'output' and none was posted within the interval, a delivery
--   is due (field 'event' 'output'), and 'output_at' keeps when.
-- Returns: per job, APPENDED.STOP when its record asks it to stop or is not processing
--   (nothing is added then), else APPENDED.GO.
-- Never: touches a record that is final or gone, or a key it was not given.
--! include tell.lua
local now, ttl, publish, prefix = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local interval, appender = tonumber(ARGV[5]), ARGV[6]
local out, at, news = {}, 7, told()
for j = 1, (#KEYS - 1) / 2 do
  local record, chunks = KEYS[2 + (j - 1) * 2], KEYS[3 + (j - 1) * 2]
  local first, count = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local f = redis.call('HMGET', record, 'status', 'stop', 'webhook_events', 'output_at',
                       'watchers')
  if f[1] ~= STATUS.PROCESSING or f[2] then
    out[j] = APPENDED.STOP
  else
    if first == 1 then redis.call('DEL', chunks) end
    for i = 0, count - 1 do
      redis.call('XADD', chunks, '0-' .. (first + i), 'c', ARGV[at + 2 + i])
    end
    redis.call('EXPIRE', chunks, ttl)
    tell(news, f[5], record, appender)
    if f[3] and string.find(',' .. f[3] .. ',', ',output,', 1, true)
        and now - (tonumber(f[4]) or 0) >= interval then
      redis.call('XADD', KEYS[1], '*', 'key', record, 'event', 'output')
      redis.call('HSET', record, 'output_at', ARGV[1])
    end
    out[j] = APPENDED.GO
  end
  at = at + 2 + count
end
send(news, publish, prefix, TOLD.OUTPUT)
return out
