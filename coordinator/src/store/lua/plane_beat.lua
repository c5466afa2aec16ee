-- plane_beat: one liveness beat of a coordinator, on the Redis server's clock. The gap
-- since the previous beat of ANY coordinator tells how long the control plane was dark
-- (no coordinator running, Redis down or restarting, Redis too slow to answer): nobody
-- could renew a lease then. A gap longer than dark_after, or a changed Redis run id (it
-- restarted from its AOF), is recorded as an outage {start = previous beat, end = now};
-- reap applies each outage to every lease of a sweep once, before it reaps anything.
-- The beat itself survives a Redis restart in the AOF, so the gap also covers the time
-- Redis was down and the writes of the last second it may have lost.
-- KEYS: <p>:plane (hash), <p>:plane:outages (zset, scored by end, capped at `keep`)
-- ARGV: coordinator id, dark_after_ms, keep
-- Returns {kind, gap_ms, start_ms, restarted}: kind 'first' | 'ok' | 'dark'.
local who, dark_after, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if who == nil or who == '' then return redis.error_reply('plane_beat: empty coordinator id') end
if dark_after == nil or dark_after <= 0 then return redis.error_reply('plane_beat: dark_after_ms must be > 0') end
if keep == nil or keep < 1 then return redis.error_reply('plane_beat: keep must be >= 1') end
local plane, outages = KEYS[1], KEYS[2]
local now = now_ms()
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') or ''
local previous = redis.call('HMGET', plane, 'beat_ms', 'run_id')
redis.call('HSET', plane, 'beat_ms', now, 'run_id', run_id, 'by', who)
local last = tonumber(previous[1])
if last == nil then return {'first', '0', '', '0'} end
local gap = now - last
local restarted = previous[2] and previous[2] ~= '' and previous[2] ~= run_id
if gap > 0 and (gap > dark_after or restarted) then
  redis.call('ZADD', outages, now, last .. '-' .. now)
  local extra = redis.call('ZCARD', outages) - keep
  if extra > 0 then redis.call('ZREMRANGEBYRANK', outages, 0, extra - 1) end
  return {'dark', tostring(gap), tostring(last), restarted and '1' or '0'}
end
return {'ok', tostring(math.max(gap, 0)), '', restarted and '1' or '0'}
