-- submit_cells: writes the cells of one batch of a submission that do not exist yet, as
-- pending, and moves the submit marker on (submit_next = the batch's end).
-- An existing cell keeps its state, attempts and results. When its spec differs from the
-- one submitted now (a setting that is not part of its identity changed: steps,
-- max_attempts, a path ...), the recorded spec is returned so that the caller can say
-- what changed; with `update` = 1 a cell that has not succeeded takes the new spec,
-- max_attempts and gpus (a pending one moves to the queue of its new GPU count; a running
-- attempt goes on with the spec it started with).
-- ARGV: fingerprint, start (index of the batch's first cell), update (0|1), then 9 fields
--   per cell: id, spec_json, gpus, stage, regime, group, max_attempts, best, after
--   group: "model/dataset/regime/seed" for finetune/scratch grid points (selection groups),
--          '' otherwise; best: "model/dataset/regime" for every grid point (best-score
--          board), '' for finals;
--   after: the pretrain cell a transfer cell of a pretrained model waits for ('' none);
--          it must exist or come earlier in the batch (plan.rs puts pretrain cells
--          first). Such a cell is written held (pending, not queued) until that cell
--          succeeds, queued when it already has, failed when it already failed for good
--          (lib.lua pretrain_ended) and cancelled when it is cancelled.
-- Returns {'ok', flags, recorded spec of each changed cell ...}: flags holds one character
-- per cell: '1' written now, '0' already there (same spec), '2' already there with another
-- spec (kept), '3' already there with another spec (updated);
-- or {'superseded'} when the marker belongs to another submission, {'gone'} without meta.
local bad = validate_base(); if bad then return bad end
local fp, start, update = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local FIRST = 4
local n = #ARGV - FIRST + 1
if fp == nil or fp == '' or start == nil then return redis.error_reply('submit_cells: fingerprint and start must be set') end
local F = 9
if n < 0 or n % F ~= 0 then return redis.error_reply('submit_cells: ARGV must hold 9 fields per cell, got ' .. n) end
local meta = redis.call('HMGET', k('meta'), 'status', 'submit_fp', 'submit_next')
if not meta[1] then return {'gone'} end
if meta[2] ~= fp then return {'superseded'} end
local in_batch = {}
for i = FIRST, #ARGV, F do
  if ARGV[i] == '' then return redis.error_reply('submit_cells: empty task id at cell ' .. ((i - FIRST) / F)) end
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
local recorded = {}
local cancelled = meta[1] == 'cancelled'
local now = now_ms()
local seq = num(redis.call('HGET', k('meta'), 'seq'), 0)
local added = 0
for i = FIRST, #ARGV, F do
  local id = ARGV[i]
  local key = task_key(id)
  local gpus = tostring(tonumber(ARGV[i + 2]))
  local old = redis.call('HMGET', key, 'spec', 'state', 'gpus', 'seq', 'prio')
  if old[2] then
    if old[1] == ARGV[i + 1] then
      flags[#flags + 1] = '0'
    else
      recorded[#recorded + 1] = old[1] or ''
      if update and old[2] ~= 'succeeded' then
        redis.call('HSET', key, 'spec', ARGV[i + 1], 'max_attempts', ARGV[i + 6])
        if old[3] ~= gpus then
          redis.call('HSET', key, 'gpus', gpus)
          if old[2] == 'pending' and redis.call('ZREM', k('queue:' .. (old[3] or '1')), id) == 1 then
            enqueue(id, gpus, num(old[5], num(old[4], 0)))
          end
        end
        flags[#flags + 1] = '3'
      else
        flags[#flags + 1] = '2'
      end
    end
  else
    seq = seq + 1
    added = added + 1
    local stage = ARGV[i + 3]
    local after = ARGV[i + 8]
    -- Finals (and pretrain cells, which others wait for) first.
    local prio = seq
    if stage == 'grid' then prio = 1e13 + seq end
    redis.call('HSET', key, 'id', id, 'spec', ARGV[i + 1], 'gpus', gpus, 'stage', stage,
      'regime', ARGV[i + 4], 'group', ARGV[i + 5], 'best', ARGV[i + 7], 'max_attempts', ARGV[i + 6],
      'seq', seq, 'prio', prio, 'attempt', 0, 'retries_used', 0, 'lost_streak', 0, 'accepted', 0,
      'after', after, 'created_ms', now)
    redis.call('ZADD', k('all'), seq, id)
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
if added > 0 then
  redis.call('HSET', k('meta'), 'seq', seq)
  redis.call('HINCRBY', k('counts'), 'total', added)
end
local reached = start + n / F
if reached > num(meta[3], 0) then redis.call('HSET', k('meta'), 'submit_next', reached) end
local reply = {'ok', table.concat(flags)}
for _, spec in ipairs(recorded) do reply[#reply + 1] = spec end
return reply
