-- trim_stream: trims a metrics stream (KEYS[1], not a sweep key base) up to what its
-- consumer groups still need: entries older than the oldest pending one (delivered, not
-- acked) of any group, or, with nothing pending, than the last one delivered to every
-- group. `~` lets Redis drop whole nodes only (cheap); at most one node of acked entries
-- stays. Returns the entries removed.
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function older(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
if type(groups) ~= 'table' or groups.err or #groups == 0 then return 0 end
local keep = nil
for _, group in ipairs(groups) do
  local name, delivered = nil, nil
  for i = 1, #group, 2 do
    if group[i] == 'name' then name = group[i + 1] end
    if group[i] == 'last-delivered-id' then delivered = group[i + 1] end
  end
  if name == nil or delivered == nil then return 0 end
  local needed = delivered
  local pending = redis.call('XPENDING', KEYS[1], name)
  if tonumber(pending[1]) > 0 and pending[2] then needed = pending[2] end
  if keep == nil or older(needed, keep) then keep = needed end
end
if keep == nil or keep == '0-0' then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', keep)
