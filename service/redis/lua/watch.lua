-- watch: a replica starts, or stops, waiting for one job (its status and its chunks).
-- flags: allow-oom
--
-- KEYS: its record.
-- ARGV: the replica, '1' to start ('' to stop).
-- Start: the replica joins the record's watchers (tell.lua) when the record is queued or
--   processing. Stop: it leaves them (the field goes with its last name).
-- Returns: 1 when the watchers changed, else 0.
-- Never: creates a record, or changes anything but its 'watchers' field.
--! include tell.lua
local f = redis.call('HMGET', KEYS[1], 'status', 'watchers')
if ARGV[2] == '1' then
  if f[1] ~= STATUS.QUEUED and f[1] ~= STATUS.PROCESSING then return 0 end
  local joined = watched_by(f[2], ARGV[1])
  if not joined then return 0 end
  redis.call('HSET', KEYS[1], 'watchers', joined)
  return 1
end
if not f[2] then return 0 end
local left = {}
for replica in string.gmatch(f[2], '[^,]+') do
  if replica ~= ARGV[1] then left[#left + 1] = replica end
end
if #left == 0 then
  redis.call('HDEL', KEYS[1], 'watchers')
elseif #left < select(2, string.gsub(f[2], ',', '')) + 1 then
  redis.call('HSET', KEYS[1], 'watchers', table.concat(left, ','))
else
  return 0
end
return 1
