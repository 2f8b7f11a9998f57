-- start_job(key, now): a function the job scripts include, not a script of its own.
-- Starts one job: its record (KEYS of the including script) becomes 'processing', started
-- now, with one more attempt. Answers the attempts so far. The one place a job starts:
-- a worker's mark (mark.lua) and the direct lane of a submit (submit.lua) both call it.
local function start_job(key, now)
  redis.call('HSET', key, 'status', STATUS.PROCESSING, 'started_at', now)
  return redis.call('HINCRBY', key, 'attempts', 1)
end
