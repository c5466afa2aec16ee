-- create_final: records the selection of a closed group and creates its final task.
-- Validates that the group is still closed and has not closed again since the caller
-- read it (version); a re-opened group is dropped from `closed` (it is pushed again
-- when it closes), a group that closed again is left for the next drain.
-- The final's id is deterministic: if it exists already (same winner as before, or a
-- resubmission), nothing new is created.
-- A group with cancelled points has not ended (mode 'incomplete'): no selection is
-- made and the current final stays; retrying the cancelled points re-opens the group.
--
-- Superseded finals (one rule, applied here atomically with the new selection):
-- while a group is open again (grid extended, points retried) its current final, if
-- still pending, is held out of the queue (lib.lua group_point_opened): its selection
-- may change, and finals are queued ahead of grid points, so it would otherwise start
-- before the new points end. When the group closes again:
--   * same winner: the same final id, which stays current and is queued again as it
--     was (nothing created, no group is ever left without its final);
--   * other winner (or no eligible point): the new final becomes current and every
--     other final of the group that is still pending is cancelled, with
--     error = 'superseded by final <id>' and superseded_by = <id> on it (counts, state
--     index and queue as in cancel). A leased or running one is never touched: it
--     finishes under its lease (fencing unchanged) and is reported as not current;
--     should it come back to pending (lost attempt), it is cancelled then.
--   * a winner whose final was cancelled as superseded earlier (A -> B -> A): that
--     final is current again and goes back to pending (unless the sweep is cancelled);
--   * incomplete: nothing selected, the held current final is queued again.
-- ARGV: group, version, winner_id ('' when no point is eligible), final_id, spec_json,
--       gpus, regime, max_attempts, mode ('select' | 'incomplete')
-- Returns {'created' | 'exists' | 'none' | 'incomplete' | 'reopened' | 'changed' | 'gone', final_id}
local bad = validate_base(); if bad then return bad end
local group, version, winner, final_id = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local spec, gpus, regime, max_attempts = ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8]
if group == nil or group == '' then return redis.error_reply('create_final: empty group') end
if version == nil then return redis.error_reply('create_final: version must be a number') end
if winner ~= '' and (final_id == nil or final_id == '' or spec == nil or spec == '' or gpus == nil) then
  return redis.error_reply('create_final: a winner needs final_id, spec_json and gpus')
end
-- A sweep without meta is gone or being deleted: nothing is created in it.
if not sweep_status() then return {'gone', ''} end
local gkey = k('group:' .. group)
local g = redis.call('HMGET', gkey, 'open', 'version')
if not g[2] then
  redis.call('SREM', k('closed'), group)
  return redis.error_reply('create_final: unknown group ' .. group)
end
if num(g[1], 0) > 0 then
  redis.call('SREM', k('closed'), group)
  return {'reopened', ''}
end
if num(g[2], 0) ~= version then return {'changed', ''} end
redis.call('SREM', k('closed'), group)

-- The current final back in the queue (held while the group was open), or back to
-- pending when it had been cancelled only because another final superseded it.
local function requeue_current(id)
  if id == nil or id == false or id == '' then return end
  local f = redis.call('HMGET', task_key(id), 'state', 'gpus', 'seq', 'prio', 'superseded_by')
  if f[1] == 'pending' then
    enqueue(id, f[2] or '1', num(f[4], num(f[3], 0)))
  elseif f[1] == 'cancelled' and f[5] and sweep_status() ~= 'cancelled' then
    move_state(id, 'cancelled', 'pending', num(f[3], 0))
    redis.call('HDEL', task_key(id), 'superseded_by', 'error', 'finished_ms')
    enqueue(id, f[2] or '1', num(f[4], num(f[3], 0)))
  end
end

-- Every other final of the group that no worker holds yet is cancelled.
local function cancel_others(current)
  for _, id in ipairs(redis.call('LRANGE', k('finals:' .. group), 0, -1)) do
    if id ~= current then cancel_superseded_final(id, current) end
  end
end

if ARGV[9] == 'incomplete' then
  requeue_current(redis.call('HGET', gkey, 'current_final'))
  return {'incomplete', ''}
end
if winner == '' then
  redis.call('HSET', gkey, 'current_final', '', 'winner', '')
  cancel_others('')
  return {'none', ''}
end
redis.call('HSET', gkey, 'current_final', final_id, 'winner', winner)
cancel_others(final_id)
if redis.call('EXISTS', task_key(final_id)) == 1 then
  requeue_current(final_id)
  return {'exists', final_id}
end
local seq = redis.call('HINCRBY', k('meta'), 'seq', 1)
local gpus_s = tostring(gpus)
redis.call('HSET', task_key(final_id), 'id', final_id, 'spec', spec, 'gpus', gpus_s, 'stage', 'final',
  'regime', regime, 'group', '', 'best', '', 'final_of', group, 'selected_from', winner,
  'max_attempts', max_attempts, 'seq', seq, 'prio', seq, 'attempt', 0, 'retries_used', 0,
  'lost_streak', 0, 'accepted', 0, 'created_ms', now_ms())
redis.call('ZADD', k('all'), seq, final_id)
redis.call('HINCRBY', k('counts'), 'total', 1)
redis.call('RPUSH', k('finals:' .. group), final_id)
if sweep_status() == 'cancelled' then
  move_state(final_id, nil, 'cancelled', seq)
else
  move_state(final_id, nil, 'pending', seq)
  enqueue(final_id, gpus_s, seq)
end
return {'created', final_id}
