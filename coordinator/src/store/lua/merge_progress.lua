-- merge_progress: merges one metrics entry of a task's current attempt into the sweep's
-- progress hash `metrics:progress` (field = task id) and appends its point to the task's
-- curve `curve:<id>` (a list capped at the latest `cap` points). An older attempt never
-- replaces a newer one (nothing written); within an attempt the higher step wins, the
-- best validation score is the maximum, and the attempt's first step and worker clock
-- are kept (`first_step`, `first_ts_ms`: the rate and ETA are computed from them).
-- ARGV: task_id, progress JSON, curve point JSON, cap
-- Returns 1 when merged, 0 when a newer attempt is recorded.
local bad = validate_base(); if bad then return bad end
local id, cap = ARGV[1], tonumber(ARGV[4])
if id == nil or id == '' then return redis.error_reply('merge_progress: empty task id') end
if cap == nil or cap <= 0 then return redis.error_reply('merge_progress: cap must be a number > 0') end
local new = cjson.decode(ARGV[2])
new.first_step, new.first_ts_ms = new.step, new.ts_ms
local current = redis.call('HGET', k('metrics:progress'), id)
if current then
  local old = cjson.decode(current)
  if old.attempt > new.attempt then return 0 end
  if old.attempt == new.attempt then
    local best = new.best_val
    if old.best_val ~= nil and (best == nil or old.best_val > best) then best = old.best_val end
    -- Records written before first_step existed start the rate at their own step.
    local first_step, first_ts = old.first_step or old.step, old.first_ts_ms or old.ts_ms
    if old.step > new.step then new = old end
    new.best_val = best
    new.first_step, new.first_ts_ms = first_step, first_ts
  end
end
redis.call('HSET', k('metrics:progress'), id, cjson.encode(new))
redis.call('RPUSH', k('curve:' .. id), ARGV[3])
redis.call('LTRIM', k('curve:' .. id), -cap, -1)
return 1
