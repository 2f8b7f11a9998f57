-- hand_back: put a stopping replica's unfinished jobs back on the queue, at once.
--
-- KEYS: the stream, then one record key per job.
-- ARGV: group, the consumer handing back, then one entry id per job.
-- Per job whose entry this consumer still holds and whose record is queued or processing:
-- the entry is copied to the end of the stream (same fields; the copy is undelivered, so
-- any replica's next read takes it, no visibility timeout to wait out), the old one is
-- acked and deleted, and the record is queued again (its attempts stay counted: the next
-- start is one more delivery). The backlog counters do not change (one entry out, one in).
-- Any other job is left as it is: one held by another consumer, or already final.
-- Returns: the number of jobs handed back.
local group, consumer = ARGV[1], ARGV[2]
local handed = 0
for i = 1, #KEYS - 1 do
  local id, key = ARGV[i + 2], KEYS[i + 1]
  local held = redis.call('XPENDING', KEYS[1], group, id, id, 1, consumer)
  local status = redis.call('HGET', key, 'status')
  if #held == 1 and (status == STATUS.PROCESSING or status == STATUS.QUEUED) then
    local entry = redis.call('XRANGE', KEYS[1], id, id)
    if #entry == 1 then
      redis.call('XADD', KEYS[1], '*', unpack(entry[1][2]))
      redis.call('XACK', KEYS[1], group, id)
      redis.call('XDEL', KEYS[1], id)
      redis.call('HSET', key, 'status', STATUS.QUEUED)
      handed = handed + 1
    end
  end
end
return handed
