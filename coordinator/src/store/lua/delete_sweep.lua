-- delete_sweep: removes every key of the sweep (all of them share the hash tag, so one
-- script reaches them on Redis Cluster too). Keys are found from the sweep's own index
-- structures, never by KEYS/SCAN: meta, counts, the task index `all` and the per-state
-- indexes (task hashes), the GPU-count set (queues), the lease zset, the group set
-- (group hashes, members, finals lists), closed, best, the pretrain cells' set and each
-- task's dependents set, the metrics stream and its progress hash. The global sets (`<prefix>:sweeps`, `<prefix>:active`) live in other
-- slots: the caller removes the name from them.
-- Refused while the sweep has unfinished work (pending, leased or running tasks, or a
-- selection waiting) unless it was cancelled first: a cancelled sweep's leases are
-- already told to stop, and their late reports find no task (stale).
-- A sweep without meta whose metrics stream or progress hash came back (a worker that
-- was still stopping appended progress after the delete) has those leftovers removed.
-- ARGV: (none)
-- Returns {'deleted', keys_deleted, tasks_deleted, a checkpoint path ('' when none)}
--      or {'leftovers', keys_deleted}
--      or {'not_found'}
--      or {'unfinished', pending, leased, running, selections_waiting}
local bad = validate_base(); if bad then return bad end

local deleted = 0
local function drop(key)
  deleted = deleted + redis.call('DEL', key)
end

local status = sweep_status()
if not status then
  drop(k('metrics'))
  drop(k('metrics:progress'))
  if deleted > 0 then return {'leftovers', tostring(deleted)} end
  return {'not_found'}
end

local counts = redis.call('HMGET', k('counts'), 'pending', 'leased', 'running')
local pending, leased, running = num(counts[1], 0), num(counts[2], 0), num(counts[3], 0)
local waiting = redis.call('SCARD', k('closed'))
if status ~= 'cancelled' and (pending + leased + running + waiting) > 0 then
  return {'unfinished', tostring(pending), tostring(leased), tostring(running), tostring(waiting)}
end

-- Task ids: the submission index, every state index, the leases and the finals lists
-- (normally all the same ids; a task missing from `all` is still found).
local tasks = {}
local function add_ids(ids)
  for _, id in ipairs(ids) do tasks[id] = true end
end
add_ids(redis.call('ZRANGE', k('all'), 0, -1))
for _, s in ipairs({'pending', 'leased', 'running', 'succeeded', 'failed', 'cancelled'}) do
  add_ids(redis.call('ZRANGE', k('state:' .. s), 0, -1))
  drop(k('state:' .. s))
end
add_ids(redis.call('ZRANGE', k('leases'), 0, -1))
for _, g in ipairs(redis.call('SMEMBERS', k('groups'))) do
  add_ids(redis.call('LRANGE', k('finals:' .. g), 0, -1))
  drop(k('group:' .. g))
  drop(k('members:' .. g))
  drop(k('finals:' .. g))
end
for _, g in ipairs(redis.call('SMEMBERS', k('gpus'))) do
  drop(k('queue:' .. g))
end

local checkpoint = ''
local task_count = 0
for id, _ in pairs(tasks) do
  if checkpoint == '' then
    local path = redis.call('HGET', task_key(id), 'ckpt_path')
    if path then checkpoint = path end
  end
  drop(k('dependents:' .. id))
  local gone = redis.call('DEL', task_key(id))
  deleted = deleted + gone
  task_count = task_count + gone
end

for _, suffix in ipairs({'all', 'leases', 'groups', 'gpus', 'closed', 'best', 'counts', 'pretrains',
                         'metrics', 'metrics:progress', 'meta'}) do
  drop(k(suffix))
end
return {'deleted', tostring(deleted), tostring(task_count), checkpoint}
