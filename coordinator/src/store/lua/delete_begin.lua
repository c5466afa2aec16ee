-- delete_begin: the first step of deleting a sweep. Refused while the sweep has
-- unfinished work (pending, leased or running tasks, or a selection waiting) unless it
-- was cancelled first: a cancelled sweep's leases are already told to stop. Otherwise the
-- meta hash is renamed to the tombstone `deleting` (with the delete's running totals):
-- from then on every script sees a sweep without meta and writes nothing to it (renew
-- answers lost, reports are stale, acquire finds it idle, submit is refused), and
-- delete_batch removes the rest in short batches. The global sets (`<prefix>:sweeps`,
-- `<prefix>:active`) live in other slots: the caller removes the name from them.
-- A sweep without meta whose metrics stream or progress hash came back (a worker that
-- was still stopping appended progress after the delete) has those leftovers removed.
-- ARGV: (none)
-- Returns {'started', tasks_total} or {'resumed', tasks_total} (a delete already begun)
--      or {'leftovers', keys_deleted} or {'not_found'}
--      or {'unfinished', pending, leased, running, selections_waiting}
local bad = validate_base(); if bad then return bad end

if redis.call('EXISTS', k('deleting')) == 1 then
  return {'resumed', tostring(num(redis.call('HGET', k('deleting'), 'tasks_total'), 0))}
end
local status = sweep_status()
if not status then
  local deleted = redis.call('DEL', k('metrics'), k('metrics:progress'))
  if deleted > 0 then return {'leftovers', tostring(deleted)} end
  return {'not_found'}
end

local counts = redis.call('HMGET', k('counts'), 'pending', 'leased', 'running', 'total')
local pending, leased, running = num(counts[1], 0), num(counts[2], 0), num(counts[3], 0)
local waiting = redis.call('SCARD', k('closed'))
if status ~= 'cancelled' and (pending + leased + running + waiting) > 0 then
  return {'unfinished', tostring(pending), tostring(leased), tostring(running), tostring(waiting)}
end
redis.call('RENAME', k('meta'), k('deleting'))
local total = num(counts[4], 0)
redis.call('HSET', k('deleting'), 'del_keys', 0, 'del_tasks', 0, 'tasks_total', total)
return {'started', tostring(total)}
