-- complete: records a task's result. Fenced: accepted only if (task, attempt) is the
-- current lease and this worker holds it (leased/running). The same attempt reporting
-- again after its success is a duplicate (nothing changes); anything else is stale and
-- counted in the sweep's stale_reports.
-- ARGV: worker_id, task_id, attempt, result_json, val_score ('' when none), diverged (0|1)
-- Returns {outcome, state}: outcome 'accepted' | 'duplicate' | 'stale'.
local bad = validate_base(); if bad then return bad end
local worker, id, attempt = ARGV[1], ARGV[2], tonumber(ARGV[3])
if worker == nil or worker == '' then return redis.error_reply('complete: empty worker id') end
if id == nil or id == '' then return redis.error_reply('complete: empty task id') end
if attempt == nil then return redis.error_reply('complete: attempt must be a number') end
if ARGV[4] == nil or ARGV[4] == '' then return redis.error_reply('complete: empty result') end
local val = tonumber(ARGV[5])
local diverged = ARGV[6] == '1'

-- A sweep without meta is gone or being deleted: the report is stale and writes nothing.
if not sweep_status() then return {'stale', ''} end
local t = load_task(id)
if t ~= nil and holds_lease(t, worker, attempt) then
  redis.call('HSET', task_key(id), 'result', ARGV[4], 'done_attempt', attempt, 'diverged', ARGV[6])
  if val ~= nil then redis.call('HSET', task_key(id), 'val', ARGV[5]) else redis.call('HDEL', task_key(id), 'val') end
  redis.call('HINCRBY', task_key(id), 'accepted', 1)
  end_lease(id, t, 'succeeded')
  -- The best validation score so far per (model, dataset, regime), for watch.
  local board = redis.call('HGET', task_key(id), 'best')
  if t.stage == 'grid' and board and board ~= '' and val ~= nil and not diverged then
    local current = redis.call('HGET', k('best'), board)
    local current_val = nil
    if current then current_val = tonumber(string.match(current, '^([^\t]*)')) end
    if current_val == nil or val > current_val then
      redis.call('HSET', k('best'), board, ARGV[5] .. '\t' .. id)
    end
  end
  return {'accepted', 'succeeded'}
end
if t ~= nil and t.state == 'succeeded' and t.done_attempt == attempt and t.worker == worker then
  return {'duplicate', t.state}
end
-- Counted only while the sweep exists: a report for a deleted sweep writes nothing.
if sweep_status() then redis.call('HINCRBY', k('meta'), 'stale_reports', 1) end
if t == nil then return {'stale', ''} end
return {'stale', t.state}
