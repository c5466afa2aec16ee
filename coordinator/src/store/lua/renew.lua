-- renew: the heartbeat. For each lease the worker says it holds: if (task, attempt,
-- worker) is the current lease and the task is leased/running, extend the deadline to
-- Redis TIME + ttl, mark it running when the child runs, and record a newer checkpoint.
-- A cancelled sweep's leases are not extended: the answer is 'cancelled' (stop).
-- An attempt that could not read its resume checkpoint says why (resume_error): recorded
-- on the task, and its own checkpoints are recorded from then on (record_checkpoint).
-- ARGV: worker_id, ttl_ms, then 6 fields per lease: task_id, attempt, running(0|1),
--       checkpoint_path, checkpoint_step, resume_error ('' when none)
-- Returns one string per lease: 'ok', 'lost' or 'cancelled'.
local bad = validate_base(); if bad then return bad end
local worker, ttl = ARGV[1], tonumber(ARGV[2])
if worker == nil or worker == '' then return redis.error_reply('renew: empty worker id') end
if ttl == nil or ttl <= 0 then return redis.error_reply('renew: ttl_ms must be a number > 0') end
if (#ARGV - 2) % 6 ~= 0 then return redis.error_reply('renew: ARGV must hold 6 fields per lease') end
for i = 3, #ARGV, 6 do
  if tonumber(ARGV[i + 1]) == nil or tonumber(ARGV[i + 4]) == nil then
    return redis.error_reply('renew: attempt and checkpoint_step must be numbers for ' .. ARGV[i])
  end
end
local status = sweep_status()
local cancelled = status == 'cancelled'
local deadline = now_ms() + ttl
local answers = {}
for i = 3, #ARGV, 6 do
  local id, attempt = ARGV[i], tonumber(ARGV[i + 1])
  local t = nil
  -- A sweep without meta is gone or being deleted: no lease of it is held any more.
  if status then t = load_task(id) end
  if t == nil or not holds_lease(t, worker, attempt) then
    if t ~= nil and t.state == 'cancelled' then
      answers[#answers + 1] = 'cancelled'
    else
      answers[#answers + 1] = 'lost'
    end
  elseif cancelled then
    answers[#answers + 1] = 'cancelled'
  else
    redis.call('HSET', task_key(id), 'deadline', deadline)
    redis.call('ZADD', k('leases'), deadline, id)
    if ARGV[i + 2] == '1' and t.state == 'leased' then
      move_state(id, 'leased', 'running', num(t.seq, 0))
    end
    record_resume_error(id, t, ARGV[i + 5])
    record_checkpoint(id, t, ARGV[i + 3], tonumber(ARGV[i + 4]))
    answers[#answers + 1] = 'ok'
  end
end
return answers
