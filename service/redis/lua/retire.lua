-- retire: remove a stopping replica's consumers from a partition's group, if idle.
--
-- KEYS: the stream.
-- ARGV: group, then the consumer names.
-- A consumer that holds no pending entry is deleted (XGROUP DELCONSUMER), so a group
-- does not collect a consumer per pod that ever ran; one that still holds entries is
-- kept (deleting it would drop them from the pending list, beyond any reclaim).
-- Returns: the number of consumers deleted.
local group, gone = ARGV[1], 0
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local known = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], group)) do
  for j = 1, #c, 2 do
    if c[j] == 'name' then known[c[j + 1]] = true end
  end
end
for i = 2, #ARGV do
  local held = redis.call('XPENDING', KEYS[1], group, '-', '+', 1, ARGV[i])
  if known[ARGV[i]] and #held == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], group, ARGV[i])
    gone = gone + 1
  end
end
return gone
