-- settle_delivery: a webhook delivery is done with, for now or for good.
--
-- KEYS: the retry set, the webhook deliveries stream.
-- ARGV: the dispatchers' group, the delivery's entry id, and to try it again later:
--   the retry member ('record key|attempt|first try') and when (its score).
-- The entry is acked and deleted; with a retry, the member joins the retry set in the same
-- atomic step, so a failed delivery is never lost between the two.
-- Returns: the number of entries acked (0 when it was acked already).
if #ARGV >= 4 then redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3]) end
local acked = redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
return acked
