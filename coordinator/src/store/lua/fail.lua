-- fail: a classified failure of the current attempt. Fenced like complete.
--   lost_worker, preempted: back to pending at once, not counted against max_attempts
--     (failed after max_lost consecutive lost attempts without checkpoint progress);
--   retryable (and unspecified): retries_used += 1; pending while retries_used <
--     max_attempts, else failed;
--   out_of_memory: a retry like retryable (retries_used += 1, same max_attempts rule), and
--     oom_failures += 1: the second OOM of the task fails it with a message that says so;
--   fatal: failed now.
-- In a cancelled sweep the task ends cancelled whatever the class.
-- The attempt's last checkpoint is recorded first, so the next attempt resumes from it.
-- ARGV: worker_id, task_id, attempt, class, message, checkpoint_path, checkpoint_step, max_lost,
--       resume_error ('' when none; see renew)
-- Returns {outcome, state}: outcome 'accepted' | 'duplicate' | 'stale'.
local bad = validate_base(); if bad then return bad end
-- The OOM that fails a task: the first is retried in a fresh process, the second is final.
local MAX_OOM_FAILURES = 2
local worker, id, attempt, class, message = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5] or ''
local ckpt_path, ckpt_step, max_lost = ARGV[6] or '', tonumber(ARGV[7]), tonumber(ARGV[8])
if worker == nil or worker == '' then return redis.error_reply('fail: empty worker id') end
if id == nil or id == '' then return redis.error_reply('fail: empty task id') end
if attempt == nil then return redis.error_reply('fail: attempt must be a number') end
if ckpt_step == nil or max_lost == nil then return redis.error_reply('fail: checkpoint_step and max_lost must be numbers') end
if class ~= 'lost_worker' and class ~= 'preempted' and class ~= 'retryable' and class ~= 'unspecified'
  and class ~= 'fatal' and class ~= 'out_of_memory' then
  return redis.error_reply('fail: unknown failure class ' .. tostring(class))
end

-- A sweep without meta is gone or being deleted: the report is stale and writes nothing.
if not sweep_status() then return {'stale', ''} end
local t = load_task(id)
if t ~= nil and holds_lease(t, worker, attempt) then
  record_resume_error(id, t, ARGV[9])
  record_checkpoint(id, t, ckpt_path, ckpt_step)
  redis.call('HSET', task_key(id), 'failed_attempt', attempt)
  local to
  if class == 'lost_worker' or class == 'preempted' then
    to = lose_attempt(id, t, max_lost, class, message)
  else
    if sweep_status() == 'cancelled' then
      to = 'cancelled'
    elseif class == 'fatal' then
      to = 'failed'
    else
      local used = t.retries_used + 1
      redis.call('HSET', task_key(id), 'retries_used', used)
      local ooms = 0
      if class == 'out_of_memory' then
        ooms = redis.call('HINCRBY', task_key(id), 'oom_failures', 1)
      end
      if ooms >= MAX_OOM_FAILURES then
        to = 'failed'
        message = 'out of accelerator memory on ' .. ooms .. ' attempts; lower batch_size or use a larger GPU; last: '
          .. message
      elseif used < t.max_attempts then
        to = 'pending'
      else
        to = 'failed'
        message = 'failed ' .. used .. ' of ' .. t.max_attempts .. ' attempts; last: ' .. message
      end
    end
    redis.call('HSET', task_key(id), 'error', message, 'error_class', class)
    to = end_lease(id, t, to)
  end
  return {'accepted', to}
end
if t ~= nil and t.attempt == attempt and t.failed_attempt == attempt and t.worker == worker then
  return {'duplicate', t.state}
end
-- Counted only while the sweep exists: a report for a deleted sweep writes nothing.
if sweep_status() then redis.call('HINCRBY', k('meta'), 'stale_reports', 1) end
if t == nil then return {'stale', ''} end
return {'stale', t.state}
