-- release_due: move webhook deliveries whose retry is due back into the deliveries stream.
--
-- KEYS: the retry set (members 'record key|attempt|first try', scored by when to retry),
--   the webhook deliveries stream.
-- ARGV: now, the most to move.
-- Each due retry becomes a new stream entry and leaves the set.
-- Returns: when the next retry is due (its score), '' when none is waiting.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  local key, attempt, since = string.match(member, '^(.*)|(%d+)|([%d.]+)$')
  redis.call('XADD', KEYS[2], '*', 'key', key, 'attempt', attempt, 'since', since)
  redis.call('ZREM', KEYS[1], member)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return next[2] or ''
