-- finish: write a batch's final records and ack its entries, in one atomic step.
-- flags: allow-oom
--
-- KEYS: the stream, the webhook deliveries stream, the backlog hash (jobs queued or
--   running, by model), then one record key per finished job.
-- ARGV: group, finished time, record TTL (s), the prefix of a replica's channel
--   ('<base>:to:'), the command to announce with (PUBLISH, or SPUBLISH on a cluster), one flag per job ('1': answer its
--   record; '' for no records at all), then one outcome per job ('R' + the result as JSON
--   when done, 'E' + the error when failed, 'C' + why when canceled: it ran past its
--   Cancel-After), then per entry to ack: its id and its model.
-- Per job: a record that is queued or processing gets its final status, result or error
-- and finished time, and a webhook delivery when its events name that status (or, for
-- canceled, 'failed'); a record
-- that is final already keeps its value; a record that is gone is not recreated.
-- The jobs it ends are told to the replicas that wait for them (tell.lua); then the entries are acked
-- (each one leaves its model's backlog, once; a model at 0 leaves the hash) and deleted (the stream keeps only work that
-- waits or runs).
-- Returns: with flags, per flagged job ({} for the others): '=' and the fields the caller
--   does not hold (started_at, attempts, created_at, webhook) when this call wrote its
--   final record, else the record as it is (fields and values; {} when gone); without
--   flags, the number of jobs.
-- Never: rewrites a final record; acks an entry it was not given.
--! include tell.lua
local group, now, ttl = ARGV[1], ARGV[2], ARGV[3]
local jobs, want = #KEYS - 3, ARGV[6]
local ended, out = told(), {}
for i = 1, jobs do
  local key = KEYS[i + 3]
  -- One read: the status decides, the rest goes to the webhook check and the answer.
  local f = redis.call('HMGET', key, 'status', 'webhook', 'webhook_events', 'started_at',
                       'attempts', 'created_at', 'watchers')
  local status = f[1]
  local written = status == STATUS.QUEUED or status == STATUS.PROCESSING
  if written then
    local outcome = ARGV[6 + i]
    local final, kind = STATUS.FAILED, string.sub(outcome, 1, 1)
    if kind == ENDING.DONE then
      final = STATUS.DONE
      redis.call('HSET', key, 'status', STATUS.DONE, 'result', string.sub(outcome, 2),
                 'finished_at', now)
    elseif kind == ENDING.CANCELED then
      final = STATUS.CANCELED
      redis.call('HSET', key, 'status', STATUS.CANCELED, 'result', 'null', 'finished_at', now)
    else
      redis.call('HSET', key, 'status', STATUS.FAILED, 'result', 'null',
                 'error', string.sub(outcome, 2), 'finished_at', now)
    end
    redis.call('EXPIRE', key, ttl)
    ended_for(ended, f[7], key)
    local events = ',' .. (f[3] or '') .. ','
    if f[2] and (string.find(events, ',' .. final .. ',', 1, true)
                 or (final == STATUS.CANCELED and string.find(events, ',' .. STATUS.FAILED .. ',', 1, true))) then
      redis.call('XADD', KEYS[2], '*', 'key', key)
    end
  end
  if want ~= '' then
    out[i] = {}
    if string.sub(want, i, i) == '1' then
      if written then
        out[i] = {'=', f[4], f[5], f[6], f[2]}
      else
        out[i] = redis.call('HGETALL', key)
      end
    end
  end
end
send(ended, ARGV[5], ARGV[4], TOLD.ENDED)
local acked, left, models = {}, {}, {}
for i = 7 + jobs, #ARGV, 2 do
  local model = ARGV[i + 1]
  if not left[model] then models[#models + 1] = model end
  left[model] = 0
  acked[#acked + 1] = ARGV[i]
end
if #models == 1 and #acked <= 1000 then
  -- One model (a batch's usual case): one XACK, whose count is what leaves its backlog.
  left[models[1]] = redis.call('XACK', KEYS[1], group, unpack(acked))
else
  for i = 7 + jobs, #ARGV, 2 do
    if redis.call('XACK', KEYS[1], group, ARGV[i]) == 1 then
      left[ARGV[i + 1]] = left[ARGV[i + 1]] + 1
    end
  end
end
-- One counter update per model of the batch, not one per entry.
for _, model in ipairs(models) do
  if left[model] > 0 and redis.call('HINCRBY', KEYS[3], model, -left[model]) <= 0 then
    redis.call('HDEL', KEYS[3], model)
  end
end
if #acked > 0 then redis.call('XDEL', KEYS[1], unpack(acked)) end
if want == '' then return jobs end
return out
