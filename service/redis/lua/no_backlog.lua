-- no_backlog(stream, group): a function the job scripts include, not a script of its own.
-- Whether every entry of the stream (a KEYS entry of the including script) has been
-- delivered to the group: its newest entry is not after the group's last-delivered-id.
-- False when the stream or the group is missing.
local function no_backlog(stream, group)
  local groups = redis.pcall('XINFO', 'GROUPS', stream)
  if groups.err then return false end
  local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  for _, g in ipairs(groups) do
    local name, delivered
    for j = 1, #g, 2 do
      if g[j] == 'name' then name = g[j + 1] end
      if g[j] == 'last-delivered-id' then delivered = g[j + 1] end
    end
    if name == group then
      if not newest then return true end
      local nm, ns = string.match(newest[1], '(%d+)-(%d+)')
      local dm, ds = string.match(delivered, '(%d+)-(%d+)')
      nm, ns, dm, ds = tonumber(nm), tonumber(ns), tonumber(dm), tonumber(ds)
      return nm < dm or (nm == dm and ns <= ds)
    end
  end
  return false
end
