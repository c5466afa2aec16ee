-- pending_fit: the sweep's queued (leasable) pending cells per GPU count, and how many of
-- the given workers could take them by the rule acquire leases with (`gpus_fit`). Held
-- cells (waiting for a pretrain cell or a selection) are not queued and not counted.
-- ARGV: the GPU count of each live registered worker
-- Returns {gpus, cells, takers, gpus, cells, takers, ...}
local bad = validate_base(); if bad then return bad end
local out = {}
for _, g in ipairs(redis.call('SMEMBERS', k('gpus'))) do
  local need = tonumber(g)
  local cells = redis.call('ZCARD', k('queue:' .. g))
  if need ~= nil and cells > 0 then
    local takers = 0
    for i = 1, #ARGV do
      if gpus_fit(need, num(ARGV[i], 0)) then takers = takers + 1 end
    end
    table.insert(out, tostring(need))
    table.insert(out, tostring(cells))
    table.insert(out, tostring(takers))
  end
end
return out
