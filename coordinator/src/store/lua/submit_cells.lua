-- submit_cells: writes the cells of one batch that do not exist yet, as pending.
-- Existing cells are left alone (state, attempts, results). Returns a string with one
-- character per cell: '1' written now, '0' already there.
-- ARGV: 9 fields per cell: id, spec_json, gpus, stage, regime, group, max_attempts, best, after
--   group: "model/dataset/regime" for finetune/scratch grid points (selection groups),
--          '' otherwise; best: the same key for every grid point (best-score board),
--          '' for finals;
--   after: the pretrain cell a transfer cell of a pretrained model waits for ('' none);
--          it must exist or come earlier in the batch. Such a cell is written held
--          (pending, not queued) until that cell succeeds, queued when it already has,
--          failed when it already failed for good (lib.lua pretrain_ended) and cancelled
--          when it is cancelled.
local bad = validate_base(); if bad then return bad end
local n = #ARGV
local F = 9
if n % F ~= 0 then return redis.error_reply('submit_cells: ARGV must hold 9 fields per cell, got ' .. n) end
if not redis.call('HGET', k('meta'), 'status') then
  return redis.error_reply('submit_cells: sweep meta missing (submit_meta first)')
end
local in_batch = {}
for i = 1, n, F do
  if ARGV[i] == '' then return redis.error_reply('submit_cells: empty task id at cell ' .. ((i - 1) / F)) end
  if tonumber(ARGV[i + 2]) == nil then return redis.error_reply('submit_cells: gpus not a number for ' .. ARGV[i]) end
  local stage = ARGV[i + 3]
  if stage ~= 'grid' and stage ~= 'final' and stage ~= 'pretrain' then
    return redis.error_reply('submit_cells: unknown stage ' .. stage .. ' for ' .. ARGV[i])
  end
  local after = ARGV[i + 8]
  if after ~= '' and not in_batch[after] and redis.call('EXISTS', task_key(after)) == 0 then
    return redis.error_reply('submit_cells: ' .. ARGV[i] .. ' waits for unknown task ' .. after)
  end
  in_batch[ARGV[i]] = true
end
local flags = {}
local cancelled = sweep_status() == 'cancelled'
for i = 1, n, F do
  local id = ARGV[i]
  local key = task_key(id)
  if redis.call('EXISTS', key) == 1 then
    flags[#flags + 1] = '0'
  else
    local seq = redis.call('HINCRBY', k('meta'), 'seq', 1)
    local stage = ARGV[i + 3]
    local after = ARGV[i + 8]
    -- Finals (and pretrain cells, which others wait for) first.
    local prio = seq
    if stage == 'grid' then prio = 1e13 + seq end
    local gpus = tostring(tonumber(ARGV[i + 2]))
    redis.call('HSET', key, 'id', id, 'spec', ARGV[i + 1], 'gpus', gpus, 'stage', stage,
      'regime', ARGV[i + 4], 'group', ARGV[i + 5], 'best', ARGV[i + 7], 'max_attempts', ARGV[i + 6],
      'seq', seq, 'prio', prio, 'attempt', 0, 'retries_used', 0, 'lost_streak', 0, 'accepted', 0,
      'after', after, 'created_ms', now_ms())
    redis.call('ZADD', k('all'), seq, id)
    redis.call('HINCRBY', k('counts'), 'total', 1)
    if stage == 'pretrain' then redis.call('SADD', k('pretrains'), id) end
    if after ~= '' then redis.call('SADD', k('dependents:' .. after), id) end
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
      group_point_opened(ARGV[i + 5])
      local pretrain_state = nil
      if after ~= '' then pretrain_state = redis.call('HGET', task_key(after), 'state') end
      if pretrain_state == 'failed' then
        fail_dependent(id, pretrain_failure(after))
      elseif pretrain_state == 'cancelled' then
        -- (a sweep retried with --failed only): it waits, cancelled, for a retry of both
        move_state(id, 'pending', 'cancelled', seq)
        redis.call('HSET', key, 'finished_ms', now_ms(), 'error', 'its pretrain cell ' .. after .. ' is cancelled')
        group_point_ended(ARGV[i + 5])
      elseif after == '' or pretrain_state == 'succeeded' then
        enqueue(id, gpus, prio)
      end
    end
    flags[#flags + 1] = '1'
  end
end
return table.concat(flags)
