-- start_job(key, now, attempts): a function the job scripts include, not a script of its own.
-- Starts one job: its record (KEYS of the including script) becomes 'processing', started
-- now, with one more attempt than `attempts`, the count the caller read from the record
-- (one write, no read back). Answers the attempts so far. The one place a job starts:
-- a worker's mark (mark.lua) and the direct lane of a submit (submit.lua) both call it.
local function start_job(key, now, attempts)
  local after = (tonumber(attempts) or 0) + 1
  redis.call('HSET', key, 'status', STATUS.PROCESSING, 'started_at', now, 'attempts', after)
  return after
end
