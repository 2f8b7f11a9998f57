-- read: the records of several jobs in one call (waiters woken together, busy GETs).
--
-- KEYS: record keys.
-- ARGV: none, or a replica and one letter per key ('1': the replica waits for that job).
-- Per key flagged whose record is queued or processing, the replica joins its watchers
-- (tell.lua: the scripts that end or start it then tell that replica), once.
-- Returns: per key its fields and values ({} when it is gone), as they were read.
-- Never: creates a record, or adds a watcher to a job that ended.
--! include tell.lua
local replica, flags = ARGV[1], ARGV[2] or ''
local out = {}
for i, key in ipairs(KEYS) do
  local flat = redis.call('HGETALL', key)
  out[i] = flat
  if string.sub(flags, i, i) == '1' then
    local status, watchers
    for j = 1, #flat, 2 do
      if flat[j] == 'status' then status = flat[j + 1] end
      if flat[j] == 'watchers' then watchers = flat[j + 1] end
    end
    if status == STATUS.QUEUED or status == STATUS.PROCESSING then
      local joined = watched_by(watchers, replica)
      -- pcall: while Redis refuses writes (out of memory, too few replicas, a disk
      -- error) the read answers anyway; that wait then ends at its time, not at the
      -- job's end. (No script flags for the same reason: flags would refuse the read.)
      if joined then redis.pcall('HSET', key, 'watchers', joined) end
    end
  end
end
return out
