-- delete_batch: removes up to `batch` task hashes (or group key sets, queues) of a sweep
-- whose delete began (delete_begin), so that no call blocks Redis for long whatever the
-- sweep's size. Keys are found from the sweep's own indexes, never by KEYS/SCAN: the task
-- index `all` and the per-state indexes and lease zset (task hashes and their curves
-- `curve:<id>`), the group set (group
-- hashes, members, finals lists and their tasks), the pretrain cells' set (each one's
-- dependents set), the GPU-count set (queues), then the fixed keys (closed, best, counts,
-- the metrics stream and its progress hash) and last the tombstone. Big collections go with UNLINK (freed off the main thread). Running totals
-- are kept on the tombstone, so a delete interrupted and run again reports all it did.
-- ARGV: batch
-- Returns {'more' | 'done', keys_deleted, tasks_deleted, a checkpoint path ('' when none)}
--   (totals since the delete began) or {'not_found'} when no delete is under way.
local bad = validate_base(); if bad then return bad end
local batch = tonumber(ARGV[1])
if batch == nil or batch <= 0 then return redis.error_reply('delete_batch: batch must be a number > 0') end
local tomb = k('deleting')
if redis.call('EXISTS', tomb) == 0 then return {'not_found'} end

local budget = batch
local keys, tasks = 0, 0
local checkpoint = redis.call('HGET', tomb, 'ckpt') or ''

local function drop_task(id)
  if checkpoint == '' then
    local path = redis.call('HGET', task_key(id), 'ckpt_path')
    if path and path ~= '' then
      checkpoint = path
      redis.call('HSET', tomb, 'ckpt', path)
    end
  end
  local gone = redis.call('DEL', task_key(id))
  keys = keys + redis.call('UNLINK', k('curve:' .. id))
  keys = keys + gone
  tasks = tasks + gone
end

-- Task ids from an index (zset): deletes their hashes and takes them out of it. True
-- when the index is empty now.
local function drain_index(key)
  if budget <= 0 then return redis.call('EXISTS', key) == 0 end
  local ids = redis.call('ZRANGE', key, 0, budget - 1)
  for _, id in ipairs(ids) do drop_task(id) end
  if #ids > 0 then
    redis.call('ZREMRANGEBYRANK', key, 0, #ids - 1)
    budget = budget - #ids
  end
  if redis.call('EXISTS', key) == 0 then
    if #ids > 0 then keys = keys + 1 end
    return true
  end
  return false
end

local empty = true
for _, suffix in ipairs({'all', 'state:pending', 'state:leased', 'state:running', 'state:succeeded',
                         'state:failed', 'state:cancelled', 'leases'}) do
  if not drain_index(k(suffix)) then empty = false end
end

-- Takes `member` out of the set `key`; the set itself counts as deleted when it empties.
local function drop_member(key, member)
  redis.call('SREM', key, member)
  if redis.call('EXISTS', key) == 0 then keys = keys + 1 end
end

-- Drops up to `budget` members of the index set `index`, each with `drop_one(member)`
-- (which unlinks the member's own keys); the sweep is not empty while the index is not.
local function drain_set(index, drop_one)
  if budget > 0 then
    for _, m in ipairs(redis.call('SRANDMEMBER', k(index), budget)) do
      drop_one(m)
      drop_member(k(index), m)
      budget = budget - 1
    end
  end
  if redis.call('EXISTS', k(index)) == 1 then empty = false end
end

-- Selection groups: their hashes, member sets, finals lists and the finals' tasks.
drain_set('groups', function(g)
  for _, id in ipairs(redis.call('LRANGE', k('finals:' .. g), 0, -1)) do drop_task(id) end
  keys = keys + redis.call('UNLINK', k('group:' .. g), k('members:' .. g), k('finals:' .. g))
end)
-- Pretrain cells: the set of transfer cells that wait for each (their hashes are in the
-- task indexes above).
drain_set('pretrains', function(id) keys = keys + redis.call('UNLINK', k('dependents:' .. id)) end)
-- The pending queues, one per GPU count.
drain_set('gpus', function(g) keys = keys + redis.call('UNLINK', k('queue:' .. g)) end)

local totals = redis.call('HMGET', tomb, 'del_keys', 'del_tasks')
local total_keys, total_tasks = num(totals[1], 0) + keys, num(totals[2], 0) + tasks
if not empty or budget <= 0 then
  redis.call('HSET', tomb, 'del_keys', total_keys, 'del_tasks', total_tasks)
  return {'more', tostring(total_keys), tostring(total_tasks), checkpoint}
end
total_keys = total_keys + redis.call('UNLINK', k('closed'), k('best'), k('counts'), k('metrics'),
  k('metrics:progress'), k('groups'), k('pretrains'), k('gpus'), k('meta'), tomb)
return {'done', tostring(total_keys), tostring(total_tasks), checkpoint}
