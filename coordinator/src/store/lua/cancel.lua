-- cancel: marks the sweep cancelled (acquire hands out nothing, renew answers 'cancelled',
-- leased/running tasks end cancelled when they report or their lease runs out) and moves
-- up to `batch` pending tasks to cancelled. Called until `remaining` is 0.
-- ARGV: batch
-- Returns {moved, remaining}
local bad = validate_base(); if bad then return bad end
local batch = tonumber(ARGV[1])
if batch == nil or batch <= 0 then return redis.error_reply('cancel: batch must be a number > 0') end
if not redis.call('HGET', k('meta'), 'status') then return redis.error_reply('cancel: sweep not found') end
redis.call('HSET', k('meta'), 'status', 'cancelled')
-- A submission still landing its batches no longer puts cancelled cells back at its end.
redis.call('HDEL', k('meta'), 'submit_reactivate')
local ids = redis.call('ZRANGE', k('state:pending'), 0, batch - 1)
local now = now_ms()
for _, id in ipairs(ids) do
  local t = load_task(id)
  if t ~= nil and t.state == 'pending' then
    dequeue(id, t.gpus)
    move_state(id, 'pending', 'cancelled', num(t.seq, 0))
    redis.call('HSET', task_key(id), 'finished_ms', now, 'error', 'cancelled by the user')
    group_point_ended(t.group)
  else
    redis.call('ZREM', k('state:pending'), id)
  end
end
return {tostring(#ids), tostring(redis.call('ZCARD', k('state:pending')))}
