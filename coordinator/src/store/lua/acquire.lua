-- acquire: leases the first pending task of this sweep whose GPU count fits the worker's
-- free GPUs (queues scored finals first, then insertion order): attempt += 1, worker,
-- deadline = Redis TIME + ttl, state leased, member of the lease zset. A queued final
-- that is no longer its group's current final is cancelled instead (see create_final).
-- ARGV: worker_id, free_gpus, ttl_ms
-- Returns {'ok', id, attempt, spec, gpus, ckpt_path, ckpt_step}
--      or {'none'}     pending tasks exist but none fits
--      or {'inactive'} the sweep is cancelled (its leases still run out)
--      or {'idle'}     nothing pending, leased or running, and no selection waiting
-- A sweep whose submission has not landed its last batch (submit marker) leases nothing.
local bad = validate_base(); if bad then return bad end
local worker, free, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if worker == nil or worker == '' then return redis.error_reply('acquire: empty worker id') end
if free == nil or free < 0 then return redis.error_reply('acquire: free_gpus must be a number >= 0') end
if ttl == nil or ttl <= 0 then return redis.error_reply('acquire: ttl_ms must be a number > 0') end

local counts = redis.call('HMGET', k('counts'), 'pending', 'leased', 'running')
local pending, leased, running = num(counts[1], 0), num(counts[2], 0), num(counts[3], 0)
local status = sweep_status()
if not status then return {'idle'} end
if redis.call('HEXISTS', k('meta'), 'submit_fp') == 1 then return {'none'} end
if pending + leased + running == 0 then
  if redis.call('SCARD', k('closed')) == 0 then return {'idle'} end
  return {'none'}
end
if status ~= 'active' then return {'inactive'} end
if pending == 0 then return {'none'} end

-- The best head over the queues this worker can run.
for _ = 1, 64 do
  local best_id, best_score, best_gpus = nil, nil, nil
  for _, g in ipairs(redis.call('SMEMBERS', k('gpus'))) do
    local gn = tonumber(g)
    if gn ~= nil and gpus_fit(gn, free) then
      local head = redis.call('ZRANGE', k('queue:' .. g), 0, 0, 'WITHSCORES')
      if head[1] then
        local score = tonumber(head[2])
        if best_score == nil or score < best_score then
          best_id, best_score, best_gpus = head[1], score, g
        end
      elseif redis.call('ZCARD', k('queue:' .. g)) == 0 then
        redis.call('SREM', k('gpus'), g)
      end
    end
  end
  if best_id == nil then return {'none'} end
  local t = load_task(best_id)
  local current = nil
  if t ~= nil and t.state == 'pending' and t.stage == 'final' then current = superseded_by(best_id) end
  if t == nil or t.state ~= 'pending' then
    -- A queue entry without a pending task behind it: drop it and look again.
    dequeue(best_id, best_gpus)
  elseif current ~= nil then
    -- A final that a newer selection of its group replaced (re-queued by a lost
    -- attempt or a retry after it was superseded): never run it, cancel it.
    cancel_superseded_final(best_id, current)
  else
    local now = now_ms()
    local attempt = t.attempt + 1
    local deadline = now + ttl
    dequeue(best_id, best_gpus)
    move_state(best_id, 'pending', 'leased', num(t.seq, 0))
    redis.call('HSET', task_key(best_id), 'attempt', attempt, 'worker', worker, 'deadline', deadline,
      'started_ms', now)
    redis.call('ZADD', k('leases'), deadline, best_id)
    local extra = redis.call('HMGET', task_key(best_id), 'spec', 'ckpt_path', 'ckpt_step')
    return {'ok', best_id, tostring(attempt), extra[1] or '', t.gpus, extra[2] or '', extra[3] or '0'}
  end
end
return {'none'}
