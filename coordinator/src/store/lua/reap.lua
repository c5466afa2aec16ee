-- reap: leases whose deadline (Redis TIME) has passed go back to pending as a lost
-- worker: not counted against max_attempts (failed after max_lost consecutive lost
-- attempts without progress; cancelled in a cancelled sweep). Atomic per call, so
-- several coordinators may reap the same sweep at once: each expired lease is taken
-- back exactly once.
-- First, in the same script, the control-plane outages this sweep has not seen yet
-- (plane_beat; meta field dark_applied_ms = the end of the last one applied) are applied,
-- oldest first: every lease whose deadline lies in [start, end + ttl) was not renewed
-- after the outage began (nobody could renew it); it gets the dark time back and at least
-- a full TTL from the outage's end (deadline = max(deadline + length, end + ttl), as etcd
-- refreshes every lease on a leader change), so its worker has a whole TTL to renew again
-- however close together outages come. A worker that is really gone is then reaped
-- within a TTL of the control plane coming back.
-- ARGV: max_lost, batch, ttl_ms, then 2 fields per outage: start_ms, end_ms (oldest first)
-- Returns {reaped, more, extended, dark_ms (the outages applied now), then task_id,
-- worker, attempt, state of each lease reaped}: more = 1 when further expired leases remain; state 'leased' means its worker
-- never renewed it (it died first, or the acquire's reply never reached it).
local bad = validate_base(); if bad then return bad end
local max_lost, batch, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if max_lost == nil or batch == nil or batch <= 0 or ttl == nil or ttl <= 0 then
  return redis.error_reply('reap: max_lost, batch and ttl_ms must be numbers, batch and ttl_ms > 0')
end
if (#ARGV - 3) % 2 ~= 0 then return redis.error_reply('reap: outages need a start and an end each') end
for i = 4, #ARGV, 2 do
  local start, stop = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  if start == nil or stop == nil or stop < start then
    return redis.error_reply('reap: outage ' .. tostring(ARGV[i]) .. '-' .. tostring(ARGV[i + 1]) .. ' is not a range')
  end
end

-- A sweep without meta is gone or being deleted: nothing to take back or extend.
if not sweep_status() then return {'0', '0', '0', '0'} end

local extended, dark_ms = 0, 0
do
  local applied = num(redis.call('HGET', k('meta'), 'dark_applied_ms'), 0)
  local latest = applied
  for i = 4, #ARGV, 2 do
    local start, stop = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
    if stop > latest then
      local gap = stop - start
      dark_ms = dark_ms + gap
      local dark = redis.call('ZRANGEBYSCORE', k('leases'), start, '(' .. (stop + ttl), 'WITHSCORES')
      for j = 1, #dark, 2 do
        local deadline = math.max(tonumber(dark[j + 1]) + gap, stop + ttl)
        redis.call('ZADD', k('leases'), deadline, dark[j])
        redis.call('HSET', task_key(dark[j]), 'deadline', deadline)
        extended = extended + 1
      end
      latest = stop
    end
  end
  if latest > applied then
    redis.call('HSET', k('meta'), 'dark_applied_ms', latest)
    redis.call('HINCRBY', k('meta'), 'lease_extensions', extended)
  end
end

local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', k('leases'), '-inf', '(' .. now, 'LIMIT', 0, batch)
local reaped = 0
local lost = {}
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
    lost[#lost + 1] = id
    lost[#lost + 1] = t.worker
    lost[#lost + 1] = tostring(t.attempt)
    lost[#lost + 1] = t.state
  end
end
local more = 0
if #expired == batch then more = 1 end
local reply = {tostring(reaped), tostring(more), tostring(extended), tostring(dark_ms)}
for _, v in ipairs(lost) do reply[#reply + 1] = v end
return reply
