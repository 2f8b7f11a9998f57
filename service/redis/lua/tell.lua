-- Telling the replicas that wait for a job, functions the job scripts include, not a
-- script of its own. A job's end, start or new chunks are told only to the replicas in its
-- record's 'watchers' field (names, comma-separated), each on its own channel of the
-- partition ('<base>:to:<replica>'), one message per replica per call: a TOLD letter, then
-- the record keys. A job no one waits for costs nothing here.
--
-- A job that ends leaves no watchers behind: the script that ends it tells them and
-- deletes the field (`ended_for`), so a replica that once waited is not told again (of a
-- replay, or of a streaming job's later chunks) and the list never grows past the waits
-- of the job's one run.
--
-- told(): an empty list of what to tell.
-- tell(list, watchers, key): adds the record key for each replica of `watchers` (the
--   field's value; nil or '' for none), but `skip` (the caller itself, or nil).
-- send(list, publish, prefix, letter): one PUBLISH (or SPUBLISH) per replica.
-- ended_for(list, watchers, key): tell(list, watchers, key) for a job that just ended,
--   and its watchers field deleted.
-- watched_by(watchers, replica): `watchers` with `replica` added (nil when it is in
--   already).
local function told() return {order = {}, keys = {}} end
local function tell(list, watchers, key, skip)
  if not watchers or watchers == '' then return end
  for replica in string.gmatch(watchers, '[^,]+') do
    if replica ~= skip then
      local keys = list.keys[replica]
      if not keys then
        keys = {}
        list.keys[replica] = keys
        list.order[#list.order + 1] = replica
      end
      keys[#keys + 1] = key
    end
  end
end
local function send(list, publish, prefix, letter)
  for _, replica in ipairs(list.order) do
    redis.call(publish, prefix .. replica, letter .. table.concat(list.keys[replica], ','))
  end
end
local function ended_for(list, watchers, key)
  if watchers and watchers ~= '' then
    tell(list, watchers, key)
    redis.call('HDEL', key, 'watchers')
  end
end
local function watched_by(watchers, replica)
  if not watchers or watchers == '' then return replica end
  if string.find(',' .. watchers .. ',', ',' .. replica .. ',', 1, true) then return nil end
  return watchers .. ',' .. replica
end
