-- take: a worker's next batch from a partition's priority streams, filled in the order
-- given (highest priority first, except on the turns that guarantee the others progress).
--
-- KEYS: the streams to read, in the order to fill the batch from.
-- ARGV: group, consumer, count.
-- New entries (XREADGROUP '>') of the first stream, then of the next while the batch has
-- room. Never blocks (the worker blocks on all the streams itself when this finds none).
-- Returns: per stream, the entries read from it as XREADGROUP answers them ({} for none).
-- Never: reads more than count entries in all, or touches a key it was not given.
local group, consumer, left = ARGV[1], ARGV[2], tonumber(ARGV[3])
local out = {}
for i, stream in ipairs(KEYS) do
  out[i] = {}
  if left > 0 then
    local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', left,
                             'STREAMS', stream, '>')
    if reply then
      out[i] = reply[1][2]
      left = left - #out[i]
    end
  end
end
return out
