-- submit: queue jobs (one coalesced call for many concurrent submits, or one bulk submit).
--
-- KEYS: the stream of the jobs' tenant and priority, then the tenant's two other priority
--   streams in the partition (counted against the limit); then one record key per job (N jobs); then the
--   idempotency keys of the jobs that carry one, in job order; last, the backlog hash (jobs
--   queued or running, by model).
-- ARGV: record TTL (s), queue limit (0: none; for the three streams together), '1' for
--   all-or-none (a bulk submit), the created time of every job, their priority ('' for
--   normal, else kept in each record for a replay), their tenant ('' for the default one,
--   else kept in each record: its owner); then five per job: prediction id, model, input (JSON),
--   request id, extras ('' or a JSON array [index in KEYS of its idempotency key or 0,
--   body digest, webhook URL or '', webhook events 'done,failed', and optionally the
--   time (Unix s) its Cancel-After passes, or '', and optionally its W3C traceparent (or
--   ''), and optionally '1': its time limit counts from its start, not its submission (a
--   batch's job: record field 'untimed', entry field 'nt'), and optionally the replica
--   that waits for it (or ''): its first watcher (tell.lua)]); optionally four more
--   for the direct lane: group, lane consumer, the prefix of a replica's channel
--   ('<base>:to:'), the command to announce with (PUBLISH, or SPUBLISH on a cluster).
-- Per job, in order:
--   its record exists already (a client retry of this very call): 'ok', left as it is;
--   its idempotency key is known: 'dup:<earlier id>' (same digest) or 'conflict';
--   the partition's streams hold `limit` entries: 'full';
--   else: record (queued), stream entry (with 'cancel', the time its Cancel-After passes,
--     when it has one; with 'tp', its traceparent, also kept in the record) and
--     idempotency key written: 'ok'.
-- Nothing is written for a job that is not 'ok'; all-or-none writes nothing unless every
-- job is new and fits. With the lane arguments and nothing waiting undelivered in any of
-- the three streams, the jobs are started (start_job), told started to their watchers and
-- delivered to the lane consumer in the same call.
-- Returns: the number of jobs when all are 'ok', else the list of answers; with the lane,
--   {that, entry ids ('' for a job not written)}.
-- Never: rewrites an existing record, or touches a key it was not given.
--! include no_backlog.lua
--! include start_job.lua
--! include tell.lua
local ttl, limit, whole, now = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1', ARGV[4]
local priority, tenant = ARGV[5], ARGV[6]
local jobs = #ARGV >= 6 and math.floor((#ARGV - 6) / 5) or 0
local function arg(i, k) return ARGV[6 + (i - 1) * 5 + k] end
-- Jobs in the partition's three streams, counted once; the loop below adds its own.
local waiting = 0
if limit > 0 then
  waiting = redis.call('XLEN', KEYS[1]) + redis.call('XLEN', KEYS[2]) + redis.call('XLEN', KEYS[3])
end
local function extras(i)
  local raw = arg(i, 5)
  if raw == '' then return 0, '', '', '', '', '', '', '' end
  local x = cjson.decode(raw)
  return x[1], x[2], x[3], x[4], x[5] or '', x[6] or '', x[7] or '', x[8] or ''
end
local out, all_ok = {}, true

if whole then
  -- All or none: if any job's idempotency key is known (a repeated bulk submit), nothing
  -- is written and each job answers its earlier id, or 'conflict' for another body.
  local known_any, answers = false, {}
  for i = 1, jobs do
    answers[i] = SUBMITTED.CONFLICT
    local idem, digest = extras(i)
    if idem > 0 then
      local known = redis.call('GET', KEYS[idem])
      if known then
        known_any = true
        local sep = string.find(known, '|', 1, true)
        if string.sub(known, sep + 1) == digest then
          answers[i] = SUBMITTED.DUP .. string.sub(known, 1, sep - 1)
        end
      end
    end
  end
  if known_any then return answers end
  if limit > 0 and waiting + jobs > limit then
    for i = 1, jobs do out[i] = SUBMITTED.FULL end
    return out
  end
end

local lane = #ARGV > 6 + 5 * jobs
local group, consumer, prefix, publish
if lane then
  local b = 7 + 5 * jobs
  group, consumer, prefix, publish = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  -- Straight to the lane only while none of the partition's streams has jobs waiting: a
  -- job never overtakes one of its own or a higher priority this way.
  lane = no_backlog(KEYS[1], group)
  for k = 2, 3 do
    lane = lane and (redis.call('EXISTS', KEYS[k]) == 0 or no_backlog(KEYS[k], group))
  end
end
-- Whether any job's record exists already (only a client retry names one): one EXISTS for
-- the whole call, a thousand keys at a time, so a fresh call pays no check per job.
local retried = false
for first = 4, 3 + jobs, 1000 do
  if redis.call('EXISTS', unpack(KEYS, first, math.min(first + 999, 3 + jobs))) > 0 then
    retried = true
    break
  end
end
local entry_ids, started, queued, models, news = {}, {}, {}, {}, told()
for i = 1, jobs do
  local key = KEYS[i + 3]
  local idem, digest, webhook, events, cancel_at, tp, untimed, watcher = extras(i)
  local known = false
  if idem > 0 then known = redis.call('GET', KEYS[idem]) end
  if retried and redis.call('EXISTS', key) == 1 then
    -- The same job again: a client retry of a call that did land (ids are random, so
    -- only a retry names a record that exists). It is not written or queued twice.
    out[i] = SUBMITTED.OK
  elseif known then
    local sep = string.find(known, '|', 1, true)
    if string.sub(known, sep + 1) == digest then
      out[i] = SUBMITTED.DUP .. string.sub(known, 1, sep - 1)
    else
      out[i] = SUBMITTED.CONFLICT
    end
    all_ok = false
  elseif limit > 0 and waiting >= limit then
    out[i] = SUBMITTED.FULL
    all_ok = false
  else
    local id, model, input, rid = arg(i, 1), arg(i, 2), arg(i, 3), arg(i, 4)
    -- One write of the record, with only the fields the job uses.
    local fields = {'status', STATUS.QUEUED, 'model', model, 'input', input,
                    'created_at', now, 'attempts', 0, 'request_id', rid}
    local function add(name, value)
      if value ~= '' then fields[#fields + 1] = name; fields[#fields + 1] = value end
    end
    add('webhook', webhook)
    if webhook ~= '' then add('webhook_events', events) end
    add('priority', priority)
    add('tenant', tenant)
    add('cancel_at', cancel_at)
    add('traceparent', tp)
    add('untimed', untimed ~= '' and '1' or '')
    add('watchers', watcher)
    redis.call('HSET', key, unpack(fields))
    redis.call('EXPIRE', key, ttl)
    if lane then
      start_job(key, now, 0)
      started[#started + 1] = key
      tell(news, watcher, key)
    end
    if cancel_at == '' and tp == '' and untimed == '' then
      entry_ids[i] = redis.call('XADD', KEYS[1], '*', 'id', id, 'model', model,
                                'input', input, 'rid', rid, 'at', now)
    else
      local fields = {'id', id, 'model', model, 'input', input, 'rid', rid, 'at', now}
      if cancel_at ~= '' then fields[#fields + 1] = 'cancel'; fields[#fields + 1] = cancel_at end
      if tp ~= '' then fields[#fields + 1] = 'tp'; fields[#fields + 1] = tp end
      if untimed ~= '' then fields[#fields + 1] = 'nt'; fields[#fields + 1] = '1' end
      entry_ids[i] = redis.call('XADD', KEYS[1], '*', unpack(fields))
    end
    waiting = waiting + 1
    if not queued[model] then models[#models + 1] = model end
    queued[model] = (queued[model] or 0) + 1
    if idem > 0 then redis.call('SET', KEYS[idem], id .. '|' .. digest, 'EX', ttl) end
    out[i] = SUBMITTED.OK
  end
  entry_ids[i] = entry_ids[i] or ''
end
-- One counter update per model of the call, not one per job.
for _, model in ipairs(models) do redis.call('HINCRBY', KEYS[#KEYS], model, queued[model]) end
if lane and #started > 0 then
  -- Nothing was waiting undelivered, so the entries just added are exactly what the group
  -- hands out next: to the lane's consumer, started above.
  redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', #started,
             'STREAMS', KEYS[1], '>')
  send(news, publish, prefix, TOLD.STARTED)
  if all_ok then return {jobs, entry_ids} end
  return {out, entry_ids}
end
if all_ok then return jobs end
return out
