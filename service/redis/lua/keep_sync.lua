-- keep_sync: the record of a sync request that named a webhook, written final at once, and
-- its webhook delivery when its events name how it ended.
--
-- KEYS: the record key, the webhook deliveries stream (same partition).
-- ARGV: record TTL (s), its final status (done, failed, canceled or aborted), then the
--   record's fields and values (webhook_events among them).
-- A canceled record is delivered when its events name 'canceled' or 'failed', an aborted
-- one when they name 'aborted' or 'failed' (as finish.lua and mark.lua do).
-- Returns: 1 when a delivery was queued, else 0.
-- Never: writes a record that exists already (an id is new for every request), or touches
--   a key it was not given.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl, final = ARGV[1], ARGV[2]
local fields = {}
local events = ''
for i = 3, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
  if ARGV[i] == 'webhook_events' then events = ',' .. ARGV[i + 1] .. ',' end
end
redis.call('HSET', KEYS[1], 'status', final, unpack(fields))
redis.call('EXPIRE', KEYS[1], ttl)
if string.find(events, ',' .. final .. ',', 1, true)
    or (final ~= STATUS.DONE and string.find(events, ',' .. STATUS.FAILED .. ',', 1, true)) then
  redis.call('XADD', KEYS[2], '*', 'key', KEYS[1])
  return 1
end
return 0
