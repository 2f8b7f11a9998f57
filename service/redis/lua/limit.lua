-- limit: one request of a tenant against its rate (a token bucket).
--
-- KEYS: the tenant's bucket (hash: tokens, at).
-- ARGV: rate (tokens per second), burst (the bucket's size).
-- The bucket starts full, refills at `rate` up to `burst` (by the server's clock, so every
-- replica sees the same figures), and a request takes one token.
-- Returns: 0 when the request may go on (a token was taken), else the milliseconds until a
--   token is there (nothing written).
-- Never: lets more than burst + rate * t requests through in any t seconds, or touches a
--   key it was not given. The bucket expires once it would be full again.
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local f = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(f[1]), tonumber(f[2])
if not tokens or not at then
  tokens, at = burst, now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
if tokens < 1 then
  return math.max(1, math.ceil((1 - tokens) / rate * 1000))
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens - 1),
           'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return 0
