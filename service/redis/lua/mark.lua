-- mark: a worker's batch is about to run; move each job on (one call per batch).
-- flags: allow-oom
--
-- KEYS: the dead-letter stream, the webhook deliveries stream, then one record key per job
--   of the batch.
-- ARGV: now, record TTL (s), max deliveries, job timeout (s, 0: none), the prefix of a
--   replica's channel ('<base>:to:'), the command to announce with (PUBLISH, or SPUBLISH
--   on a cluster), then per job its stream entry id.
-- Per job, by its status:
--   queued/processing, past its Cancel-After (cancel_at): aborted, never started
--     ('aborted');
--   queued/processing, past its deadline (from submission): failed "timed out" ('expired');
--   queued/processing, started max-deliveries times already: failed "gave up after N
--     deliveries", with a dead-letter entry giving the reason, whose id the record keeps
--     as dead_entry (for replay.lua) ('dead');
--   queued/processing otherwise: started (start_job); answers its status before;
--   done/failed/canceled (a re-delivery, or canceled while queued), or gone: untouched.
-- Jobs it ends (which get a webhook delivery when they have a webhook whose events name
-- 'failed', or for an aborted one 'aborted' or 'failed') and jobs it starts are told to
-- the replicas that wait for them (tell.lua).
-- Returns: per job its status before ('' when the record is gone), or
--   'aborted'/'expired'/'dead'.
-- Never: touches a final record.
--! include start_job.lua
--! include tell.lua
local now, ttl = tonumber(ARGV[1]), ARGV[2]
local max_deliveries, timeout = tonumber(ARGV[3]), tonumber(ARGV[4])
local out, ended, started = {}, told(), told()
for i = 3, #KEYS do
  local key = KEYS[i]
  local f = redis.call('HMGET', key, 'status', 'attempts', 'created_at', 'requeued_at',
                       'cancel_at', 'untimed', 'watchers')
  local status = f[1]
  if status == STATUS.QUEUED or status == STATUS.PROCESSING then
    local attempts = tonumber(f[2]) or 0
    local cancel_at = tonumber(f[5])
    if cancel_at and now >= cancel_at then
      redis.call('HSET', key, 'status', STATUS.ABORTED, 'result', 'null', 'finished_at', ARGV[1])
      redis.call('EXPIRE', key, ttl)
      status = MARKED.ABORTED
      ended_for(ended, f[7], key)
    -- The time limit counts from submission, or from a replay of a dead letter (from the
    -- start, for a job whose wait is not timed: a batch's).
    elseif timeout > 0 and f[6] ~= '1' and now - (tonumber(f[4] or f[3]) or now) > timeout then
      redis.call('HSET', key, 'status', STATUS.FAILED, 'result', 'null',
                 'error', 'timed out: not finished within ' .. ARGV[4] .. ' s of submission',
                 'finished_at', ARGV[1])
      redis.call('EXPIRE', key, ttl)
      status = MARKED.EXPIRED
      ended_for(ended, f[7], key)
    elseif attempts >= max_deliveries then
      local reason = 'gave up after ' .. attempts .. ' deliveries'
      redis.call('HSET', key, 'status', STATUS.FAILED, 'result', 'null', 'error', reason,
                 'finished_at', ARGV[1])
      redis.call('EXPIRE', key, ttl)
      local dead = redis.call('XADD', KEYS[1], 'MAXLEN', '~', 100000, '*', 'key', key,
                              'entry', ARGV[4 + i], 'reason', reason, 'at', ARGV[1])
      redis.call('HSET', key, 'dead_entry', dead)
      status = MARKED.DEAD
      ended_for(ended, f[7], key)
    else
      start_job(key, ARGV[1], attempts)
      tell(started, f[7], key)
    end
  end
  if status == MARKED.EXPIRED or status == MARKED.DEAD or status == MARKED.ABORTED then
    local hook = redis.call('HMGET', key, 'webhook', 'webhook_events')
    local events = ',' .. (hook[2] or '') .. ','
    if hook[1] and (string.find(events, ',' .. STATUS.FAILED .. ',', 1, true)
                    or (status == MARKED.ABORTED
                    and string.find(events, ',' .. STATUS.ABORTED .. ',', 1, true))) then
      redis.call('XADD', KEYS[2], '*', 'key', key)
    end
  end
  out[i - 2] = status or MARKED.GONE
end
send(ended, ARGV[6], ARGV[5], TOLD.ENDED)
send(started, ARGV[6], ARGV[5], TOLD.STARTED)
return out
