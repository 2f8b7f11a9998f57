-- purge_letter: one dead letter deleted, and its job's record told so.
--
-- KEYS: the dead-letter stream, the job's record (one slot: the job's partition).
-- ARGV: the letter's entry id ('': the one the record names).
-- The letter is deleted only if it is this job's (its `key` is the record's key); the
-- record's dead_entry goes when it names that letter. A letter whose record expired is
-- purged by its entry id alone.
-- Returns: 1 when the letter was deleted; 0 when there was none (or not this job's);
--   -1 when the job has no record and no entry id was given.
local named = redis.call('HGET', KEYS[2], 'dead_entry')
local entry = ARGV[1]
if entry == '' then
  if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
  if not named then return 0 end
  entry = named
end
local found = redis.call('XRANGE', KEYS[1], entry, entry)
local deleted = 0
if #found > 0 then
  local fields = found[1][2]
  for j = 1, #fields, 2 do
    if fields[j] == 'key' and fields[j + 1] == KEYS[2] then
      deleted = redis.call('XDEL', KEYS[1], entry)
    end
  end
end
if named == entry then redis.call('HDEL', KEYS[2], 'dead_entry') end
return deleted
