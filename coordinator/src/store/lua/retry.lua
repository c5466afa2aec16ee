-- retry: moves up to `batch` tasks of state `from` (failed or cancelled) back to pending
-- with a fresh budget (retries_used = 0, lost_streak = 0, oom_failures = 0) and marks the
-- sweep active.
-- Results of succeeded tasks are never touched. Called until `remaining` is 0.
-- ARGV: from, batch
-- Returns {moved, remaining}
local bad = validate_base(); if bad then return bad end
local from, batch = ARGV[1], tonumber(ARGV[2])
if from ~= 'failed' and from ~= 'cancelled' then
  return redis.error_reply('retry: only failed or cancelled tasks can be retried, not ' .. tostring(from))
end
if batch == nil or batch <= 0 then return redis.error_reply('retry: batch must be a number > 0') end
if not redis.call('HGET', k('meta'), 'status') then return redis.error_reply('retry: sweep not found') end
redis.call('HSET', k('meta'), 'status', 'active')
local ids = redis.call('ZRANGE', k('state:' .. from), 0, batch - 1)
for _, id in ipairs(ids) do
  local t = load_task(id)
  if t ~= nil and t.state == from then
    move_state(id, from, 'pending', num(t.seq, 0))
    redis.call('HSET', task_key(id), 'retries_used', 0, 'lost_streak', 0, 'oom_failures', 0)
    redis.call('HDEL', task_key(id), 'finished_ms')
    -- A final of a group that is open again waits (held) for the group to close. A
    -- superseded final is queued like any task and acquire cancels it again (left in
    -- `cancelled` here, it would stay first in the batch and this loop would not end).
    -- A transfer cell whose pretrain cell has not succeeded waits for it the same way.
    if not final_waits(id) and not waits_for_pretrain(id) then enqueue(id, t.gpus, num(t.prio, num(t.seq, 0))) end
    group_point_opened(t.group)
  else
    redis.call('ZREM', k('state:' .. from), id)
  end
end
return {tostring(#ids), tostring(redis.call('ZCARD', k('state:' .. from)))}
