-- reap: leases whose deadline (Redis TIME) has passed go back to pending as a lost
-- worker: not counted against max_attempts (failed after max_lost consecutive lost
-- attempts without progress; cancelled in a cancelled sweep). Atomic per call, so
-- several coordinators may reap the same sweep at once: each expired lease is taken
-- back exactly once.
-- ARGV: max_lost, batch
-- Returns {reaped, more}: more = 1 when further expired leases remain.
local bad = validate_base(); if bad then return bad end
local max_lost, batch = tonumber(ARGV[1]), tonumber(ARGV[2])
if max_lost == nil or batch == nil or batch <= 0 then
  return redis.error_reply('reap: max_lost and batch must be numbers, batch > 0')
end
-- A sweep without meta is gone or being deleted: nothing to take back.
if not sweep_status() then return {'0', '0'} end
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', k('leases'), '-inf', '(' .. now, 'LIMIT', 0, batch)
local reaped = 0
for _, id in ipairs(expired) do
  local t = load_task(id)
  if t == nil or (t.state ~= 'leased' and t.state ~= 'running') then
    -- A lease entry without a leased task behind it: drop it.
    redis.call('ZREM', k('leases'), id)
  else
    lose_attempt(id, t, max_lost, 'lost_worker',
      'lease expired (worker ' .. t.worker .. ', attempt ' .. t.attempt .. ')')
    redis.call('HINCRBY', k('meta'), 'lease_expiries', 1)
    reaped = reaped + 1
  end
end
local more = 0
if #expired == batch then more = 1 end
return {tostring(reaped), tostring(more)}
