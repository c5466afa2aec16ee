-- Shared helpers, prepended to every transition script (store/scripts.rs).
-- KEYS[1] is the sweep's key base "<prefix>:{<sweep>}:"; every key of the sweep is
-- KEYS[1] .. suffix, so all of them hash to the sweep's slot.
local base = KEYS[1]
local function k(suffix) return base .. suffix end
local function task_key(id) return base .. 'task:' .. id end

-- Milliseconds on the Redis server's clock: lease deadlines never use a host's clock.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function num(v, default)
  local n = tonumber(v)
  if n == nil then return default end
  return n
end

local function is_terminal(state)
  return state == 'succeeded' or state == 'failed' or state == 'cancelled'
end

local function sweep_status()
  return redis.call('HGET', k('meta'), 'status')
end

-- Moves a task between states: its field, the per-state index and the counts.
local function move_state(id, from, to, seq)
  redis.call('HSET', task_key(id), 'state', to)
  if from then
    redis.call('ZREM', k('state:' .. from), id)
    redis.call('HINCRBY', k('counts'), from, -1)
  end
  redis.call('ZADD', k('state:' .. to), seq, id)
  redis.call('HINCRBY', k('counts'), to, 1)
end

-- The one lease-matching rule: a cell that needs `need` GPUs runs on a worker with at
-- least that many free (acquire leases by it, pending_fit explains waiting cells by it).
local function gpus_fit(need, free)
  return need <= free
end

-- The pending queue: one zset per GPU count (scored by priority), and the set of GPU
-- counts that have one, so acquire looks only at queues the worker can run.
local function enqueue(id, gpus, prio)
  redis.call('ZADD', k('queue:' .. gpus), prio, id)
  redis.call('SADD', k('gpus'), gpus)
end

local function dequeue(id, gpus)
  redis.call('ZREM', k('queue:' .. gpus), id)
end

-- A grid point of a selection group reached a terminal state: one fewer open point;
-- when none is left the group closes (version += 1) and waits in `closed` for
-- schedule_finals.
local function group_point_ended(group)
  if group == nil or group == false or group == '' then return end
  local gkey = k('group:' .. group)
  local open = redis.call('HINCRBY', gkey, 'open', -1)
  if open <= 0 then
    if open < 0 then redis.call('HSET', gkey, 'open', 0) end
    redis.call('HINCRBY', gkey, 'version', 1)
    redis.call('SADD', k('closed'), group)
  end
end

-- A grid point left a terminal state (retry) or was added: the group is open again.
-- Its current final, if still pending, is held (out of the queue, still `pending`)
-- until the group closes: create_final then re-queues it (same winner) or cancels it
-- (superseded), so a final whose selection may change never starts in the meantime.
local function group_point_opened(group)
  if group == nil or group == false or group == '' then return end
  local gkey = k('group:' .. group)
  redis.call('HINCRBY', gkey, 'open', 1)
  local current = redis.call('HGET', gkey, 'current_final')
  if current and current ~= '' then
    local f = redis.call('HMGET', task_key(current), 'state', 'gpus')
    if f[1] == 'pending' then dequeue(current, f[2] or '1') end
  end
end

-- For a final task of a selection group that is no longer the group's current final:
-- the current final's id ('' when the group has none now). nil for any other task.
local function superseded_by(id)
  local group = redis.call('HGET', task_key(id), 'final_of')
  if not group or group == '' then return nil end
  local current = redis.call('HGET', k('group:' .. group), 'current_final') or ''
  if current == id then return nil end
  return current
end

-- Cancels a superseded final that no worker holds (state pending) and says why on it;
-- counts, state index and queue move exactly as in cancel. A leased or running final
-- is left alone (its lease and fencing are untouched). Returns true when cancelled.
local function cancel_superseded_final(id, current)
  local f = redis.call('HMGET', task_key(id), 'state', 'gpus', 'seq')
  if f[1] ~= 'pending' then return false end
  dequeue(id, f[2] or '1')
  move_state(id, 'pending', 'cancelled', num(f[3], 0))
  local why = 'superseded by final ' .. current
  if current == '' then why = 'superseded: its group has no eligible point now' end
  redis.call('HSET', task_key(id), 'finished_ms', now_ms(), 'error', why, 'superseded_by', current)
  return true
end

-- True for the final of a group that is open again: it stays out of the queue (held)
-- until the group closes and create_final decides on it.
local function final_waits(id)
  local group = redis.call('HGET', task_key(id), 'final_of')
  return group and group ~= '' and num(redis.call('HGET', k('group:' .. group), 'open'), 0) > 0
end

-- Transfer cells of a pretrained model wait for their pretrain cell (field `after`):
-- `pending` but out of the queue (held) until that cell has succeeded.
local function waits_for_pretrain(id)
  local after = redis.call('HGET', task_key(id), 'after')
  if not after or after == '' then return false end
  return redis.call('HGET', task_key(after), 'state') ~= 'succeeded'
end

-- The reason a pretrain cell's dependents fail with it: its id, model and last error.
local function pretrain_failure(pretrain_id)
  local p = redis.call('HMGET', task_key(pretrain_id), 'spec', 'error')
  local name = '?'
  local ok, spec = pcall(cjson.decode, p[1] or '')
  if ok and type(spec) == 'table' and type(spec.model) == 'table' and type(spec.model.name) == 'string' then
    name = spec.model.name
  end
  return 'pretrain cell ' .. pretrain_id .. ' (model ' .. name .. ') failed: ' .. (p[2] or 'no message')
end

-- A held dependent fails because its pretrain cell failed for good: counts, state index
-- and its selection group as any failure; class fatal (running it could not help).
local function fail_dependent(id, why)
  local f = redis.call('HMGET', task_key(id), 'state', 'gpus', 'seq', 'group')
  if f[1] ~= 'pending' then return end
  dequeue(id, f[2] or '1')
  move_state(id, 'pending', 'failed', num(f[3], 0))
  redis.call('HSET', task_key(id), 'finished_ms', now_ms(), 'error', why, 'error_class', 'fatal')
  group_point_ended(f[4])
end

-- A pretrain cell ended: succeeded queues its held dependents (at their own priority),
-- failed fails them with a message naming it; cancelled leaves them (cancel handles
-- the pending ones itself).
local function pretrain_ended(id, to)
  if to ~= 'succeeded' and to ~= 'failed' then return end
  local deps = redis.call('SMEMBERS', k('dependents:' .. id))
  if #deps == 0 then return end
  local why = ''
  if to == 'failed' then why = pretrain_failure(id) end
  for _, dep in ipairs(deps) do
    if to == 'succeeded' then
      local f = redis.call('HMGET', task_key(dep), 'state', 'gpus', 'seq', 'prio')
      if f[1] == 'pending' then enqueue(dep, f[2] or '1', num(f[4], num(f[3], 0))) end
    else
      fail_dependent(dep, why)
    end
  end
end

-- A task that went back to pending after a lease: queued again, except a final that a
-- newer selection superseded (cancelled), the current final of a group that is open
-- again (held until the group closes, like group_point_opened does) and a transfer cell
-- whose pretrain cell has not succeeded (held until it does).
-- Returns the task's state now ('pending' or 'cancelled').
local function requeue(id, gpus, prio)
  local current = superseded_by(id)
  if current ~= nil then
    cancel_superseded_final(id, current)
    return 'cancelled'
  end
  if not final_waits(id) and not waits_for_pretrain(id) then enqueue(id, gpus, prio) end
  return 'pending'
end

-- Leaves leased/running for state `to` (pending or a terminal state). Returns the state
-- the task is in now (`to`, or cancelled for a superseded final sent back to pending).
local function end_lease(id, t, to)
  redis.call('ZREM', k('leases'), id)
  redis.call('HDEL', task_key(id), 'deadline')
  local seq = num(t.seq, 0)
  move_state(id, t.state, to, seq)
  if to == 'pending' then
    return requeue(id, t.gpus, num(t.prio, seq))
  end
  redis.call('HSET', task_key(id), 'finished_ms', now_ms())
  group_point_ended(t.group)
  if t.stage == 'pretrain' then pretrain_ended(id, to) end
  return to
end

-- Reads the fields of a task into a table (nil when the task does not exist).
local function load_task(id)
  local raw = redis.call('HMGET', task_key(id), 'state', 'attempt', 'worker', 'seq', 'prio', 'gpus',
    'group', 'retries_used', 'max_attempts', 'lost_streak', 'ckpt_step', 'done_attempt',
    'failed_attempt', 'stage', 'ckpt_path', 'ckpt_attempt')
  if not raw[1] then return nil end
  return {
    state = raw[1], attempt = num(raw[2], 0), worker = raw[3] or '', seq = raw[4], prio = raw[5],
    gpus = raw[6] or '1', group = raw[7] or '', retries_used = num(raw[8], 0),
    max_attempts = num(raw[9], 1), lost_streak = num(raw[10], 0), ckpt_step = num(raw[11], 0),
    done_attempt = num(raw[12], 0), failed_attempt = num(raw[13], 0), stage = raw[14] or 'grid',
    ckpt_path = raw[15] or '', ckpt_attempt = num(raw[16], 0),
  }
end

local function holds_lease(t, worker, attempt)
  return (t.state == 'leased' or t.state == 'running') and t.attempt == attempt and t.worker == worker
end

-- Records a checkpoint the current attempt (t.attempt, fenced by the caller) reports:
-- - a newer one (higher step) always; progress resets the count of consecutive lost attempts;
-- - a lower one under another path only while the recorded checkpoint is an older
--   attempt's: that attempt did not resume from it (missing or unreadable to it, it started
--   from step 0), so the recorded checkpoint follows the new attempt from now on. Once the
--   attempt has one recorded, its own older checkpoints (a late heartbeat) never replace it.
local function record_checkpoint(id, t, path, step)
  if path == nil or path == '' then return end
  if step > t.ckpt_step then
    redis.call('HSET', task_key(id), 'ckpt_path', path, 'ckpt_step', step, 'ckpt_attempt', t.attempt, 'lost_streak', 0)
    t.lost_streak = 0
  elseif t.ckpt_attempt ~= t.attempt and path ~= t.ckpt_path then
    redis.call('HSET', task_key(id), 'ckpt_path', path, 'ckpt_step', step, 'ckpt_attempt', t.attempt)
  else
    return
  end
  t.ckpt_step, t.ckpt_path, t.ckpt_attempt = step, path, t.attempt
end

-- The current attempt could not read the checkpoint it was to resume from: recorded on
-- the task once per attempt (TaskInfo.resume_error).
local function record_resume_error(id, t, reason)
  if reason == nil or reason == '' then return end
  local key = task_key(id)
  if num(redis.call('HGET', key, 'resume_error_attempt'), 0) == t.attempt then return end
  redis.call('HSET', key, 'resume_error', 'attempt ' .. t.attempt .. ': ' .. reason, 'resume_error_attempt', t.attempt)
end

-- A lost attempt (expired lease, lost worker, preemption): back to pending, not counted
-- against max_attempts; failed after `max_lost` consecutive lost attempts without
-- checkpoint progress; cancelled when the sweep was cancelled. Returns the new state.
local function lose_attempt(id, t, max_lost, class, message)
  local streak = t.lost_streak + 1
  local to = 'pending'
  local err = message
  if sweep_status() == 'cancelled' then
    to = 'cancelled'
  elseif streak >= max_lost then
    to = 'failed'
    err = 'lost too many times: ' .. streak .. ' consecutive lost attempts without progress; last: ' .. message
  end
  redis.call('HSET', task_key(id), 'lost_streak', streak, 'error', err, 'error_class', class)
  return end_lease(id, t, to)
end

local function validate_base()
  if base == nil or string.sub(base, -1) ~= ':' then
    return redis.error_reply('tsweep script: KEYS[1] must be the sweep key base ending in ":"')
  end
  return nil
end
