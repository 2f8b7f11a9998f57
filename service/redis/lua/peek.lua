-- peek: what one partition's streams hold, for the dashboard, without the jobs' inputs.
--
-- KEYS: streams of one partition (one slot).
-- ARGV: the workers' group; how many jobs to list from each stream, of those running and
--   of those queued apart (0: none listed).
-- Entries up to the group's last-delivered id were delivered and are running (acked ones
-- are deleted in the call that acks them); those after it are queued. A stream without
-- the group yet holds queued entries only. Reads at most 2 * ARGV[2] + 1 entries a
-- stream, whatever its length.
-- Returns: per stream, {length, pending, the oldest queued entry's id or false, the
--   running listed, the queued listed}, each listed job as {entry id, prediction id, model}.
local most = tonumber(ARGV[2])

local function listed(entries)
  local out = {}
  for _, entry in ipairs(entries) do
    local id, model = false, false
    local fields = entry[2]
    for j = 1, #fields, 2 do
      if fields[j] == 'id' then id = fields[j + 1] elseif fields[j] == 'model' then model = fields[j + 1] end
    end
    if id then out[#out + 1] = {entry[1], id, model or ''} end
  end
  return out
end

local answer = {}
for i, stream in ipairs(KEYS) do
  local length = redis.call('XLEN', stream)
  local pending, last = 0, '0-0'
  local running, queued, oldest = {}, {}, false
  if length > 0 then
    local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
    if ok then
      for _, group in ipairs(groups) do
        local name, seen, held = nil, nil, 0
        for j = 1, #group, 2 do
          if group[j] == 'name' then name = group[j + 1]
          elseif group[j] == 'last-delivered-id' then seen = group[j + 1]
          elseif group[j] == 'pending' then held = group[j + 1] end
        end
        if name == ARGV[1] then last, pending = seen, held end
      end
    end
    local first = redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', math.max(1, most))
    if #first > 0 then oldest = first[1][1] end
    if most > 0 then
      queued = listed(first)
      if last ~= '0-0' then running = listed(redis.call('XRANGE', stream, '-', last, 'COUNT', most)) end
    end
  end
  answer[i] = {length, pending, oldest, running, queued}
end
return answer
