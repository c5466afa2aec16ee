-- create_final: records the selection of a closed group and creates its final task.
-- Validates that the group is still closed and has not closed again since the caller
-- read it (version); a re-opened group is dropped from `closed` (it is pushed again
-- when it closes), a group that closed again is left for the next drain.
-- The final's id is deterministic: if it exists already (same winner as before, or a
-- resubmission), nothing new is created.
-- A group with cancelled points has not ended (mode 'incomplete'): no selection is
-- made and the current final stays; retrying the cancelled points re-opens the group.
-- ARGV: group, version, winner_id ('' when no point is eligible), final_id, spec_json,
--       gpus, regime, max_attempts, mode ('select' | 'incomplete')
-- Returns {'created' | 'exists' | 'none' | 'incomplete' | 'reopened' | 'changed', final_id}
local bad = validate_base(); if bad then return bad end
local group, version, winner, final_id = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local spec, gpus, regime, max_attempts = ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8]
if group == nil or group == '' then return redis.error_reply('create_final: empty group') end
if version == nil then return redis.error_reply('create_final: version must be a number') end
if winner ~= '' and (final_id == nil or final_id == '' or spec == nil or spec == '' or gpus == nil) then
  return redis.error_reply('create_final: a winner needs final_id, spec_json and gpus')
end
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
if ARGV[9] == 'incomplete' then return {'incomplete', ''} end
if winner == '' then
  redis.call('HSET', gkey, 'current_final', '', 'winner', '')
  return {'none', ''}
end
redis.call('HSET', gkey, 'current_final', final_id, 'winner', winner)
if redis.call('EXISTS', task_key(final_id)) == 1 then
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
