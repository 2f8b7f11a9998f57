-- read: the records of several jobs in one call (waiters woken together, busy GETs).
--
-- KEYS: record keys.
-- ARGV: none.
-- Returns: per key its fields and values ({} when it is gone).
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGETALL', key) end
return out
