-- submit_cells: writes the cells of one batch that do not exist yet, as pending.
-- Existing cells are left alone (state, attempts, results). Returns a string with one
-- character per cell: '1' written now, '0' already there.
-- ARGV: 8 fields per cell: id, spec_json, gpus, stage, regime, group, max_attempts, best
--   group: "model/dataset/regime" for finetune/scratch grid points (selection groups),
--          '' otherwise; best: the same key for every grid point (best-score board),
--          '' for finals.
local bad = validate_base(); if bad then return bad end
local n = #ARGV
if n % 8 ~= 0 then return redis.error_reply('submit_cells: ARGV must hold 8 fields per cell, got ' .. n) end
if not redis.call('HGET', k('meta'), 'status') then
  return redis.error_reply('submit_cells: sweep meta missing (submit_meta first)')
end
for i = 1, n, 8 do
  if ARGV[i] == '' then return redis.error_reply('submit_cells: empty task id at cell ' .. ((i - 1) / 8)) end
  if tonumber(ARGV[i + 2]) == nil then return redis.error_reply('submit_cells: gpus not a number for ' .. ARGV[i]) end
  if ARGV[i + 3] ~= 'grid' and ARGV[i + 3] ~= 'final' then
    return redis.error_reply('submit_cells: unknown stage ' .. ARGV[i + 3] .. ' for ' .. ARGV[i])
  end
end
local flags = {}
local cancelled = sweep_status() == 'cancelled'
for i = 1, n, 8 do
  local id = ARGV[i]
  local key = task_key(id)
  if redis.call('EXISTS', key) == 1 then
    flags[#flags + 1] = '0'
  else
    local seq = redis.call('HINCRBY', k('meta'), 'seq', 1)
    local stage = ARGV[i + 3]
    -- Finals first: a final is the last step of its group's answer.
    local prio = seq
    if stage == 'grid' then prio = 1e13 + seq end
    local gpus = tostring(tonumber(ARGV[i + 2]))
    redis.call('HSET', key, 'id', id, 'spec', ARGV[i + 1], 'gpus', gpus, 'stage', stage,
      'regime', ARGV[i + 4], 'group', ARGV[i + 5], 'best', ARGV[i + 7], 'max_attempts', ARGV[i + 6],
      'seq', seq, 'prio', prio, 'attempt', 0, 'retries_used', 0, 'lost_streak', 0, 'accepted', 0,
      'created_ms', now_ms())
    redis.call('ZADD', k('all'), seq, id)
    redis.call('HINCRBY', k('counts'), 'total', 1)
    if ARGV[i + 5] ~= '' then
      local gkey = k('group:' .. ARGV[i + 5])
      redis.call('SADD', k('groups'), ARGV[i + 5])
      redis.call('SADD', k('members:' .. ARGV[i + 5]), id)
      redis.call('HINCRBY', gkey, 'points', 1)
    end
    if cancelled then
      move_state(id, nil, 'cancelled', seq)
    else
      move_state(id, nil, 'pending', seq)
      enqueue(id, gpus, prio)
      group_point_opened(ARGV[i + 5])
    end
    flags[#flags + 1] = '1'
  end
end
return table.concat(flags)
