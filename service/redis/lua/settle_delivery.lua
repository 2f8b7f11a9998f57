-- settle_delivery: a webhook delivery is done with, for now or for good.
--
-- KEYS: the retry set, the webhook deliveries stream; and with a note, the job's record.
-- ARGV: the dispatchers' group, the delivery's entry id; with a note, what became of the
--   job's post ('delivered', 'retrying' or 'given up'), its attempt and when (Unix
--   seconds); and to try it again later: the retry member ('record key|attempt|first
--   try') and when (its score).
-- The entry is acked and deleted; with a retry, the member joins the retry set in the same
-- atomic step, so a failed delivery is never lost between the two. The note goes into the
-- record (fields webhook_status, webhook_attempts, webhook_at) while it exists.
-- Returns: the number of entries acked (0 when it was acked already).
local at = 3
if #KEYS >= 3 then
  if redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('HSET', KEYS[3], 'webhook_status', ARGV[3], 'webhook_attempts', ARGV[4],
      'webhook_at', ARGV[5])
  end
  at = 6
end
if #ARGV >= at + 1 then redis.call('ZADD', KEYS[1], ARGV[at + 1], ARGV[at]) end
local acked = redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
return acked
