-- submit_meta: records a sweep's meta (created once; settings updated) and marks it
-- active. Returns the previous status ('' for a new sweep) so that the caller can
-- re-queue the cancelled cells of a cancelled sweep that is submitted again.
-- It also creates the sweep's metrics stream with the coordinator's consumer group
-- (reading from the start): workers append with XADD ... NOMKSTREAM, which never creates
-- a stream, so progress appended after `tsweep delete` cannot bring the key back.
-- ARGV: name, settings_json, metrics_group
local bad = validate_base(); if bad then return bad end
local name, settings = ARGV[1], ARGV[2]
if name == nil or name == '' then return redis.error_reply('submit_meta: empty sweep name') end
if settings == nil then return redis.error_reply('submit_meta: missing settings') end
local group = ARGV[3]
if group == nil or group == '' then return redis.error_reply('submit_meta: missing metrics group') end
local previous = redis.call('HGET', k('meta'), 'status') or ''
redis.call('HSETNX', k('meta'), 'name', name)
redis.call('HSETNX', k('meta'), 'created_ms', now_ms())
redis.call('HSETNX', k('meta'), 'stale_reports', 0)
redis.call('HSETNX', k('meta'), 'lease_expiries', 0)
redis.call('HSETNX', k('meta'), 'seq', 0)
redis.call('HSET', k('meta'), 'settings', settings, 'status', 'active', 'submitted_ms', now_ms())
for _, s in ipairs({'pending', 'leased', 'running', 'succeeded', 'failed', 'cancelled', 'total'}) do
  redis.call('HSETNX', k('counts'), s, 0)
end
if redis.call('EXISTS', k('metrics')) == 0 then
  redis.call('XGROUP', 'CREATE', k('metrics'), group, '0', 'MKSTREAM')
end
return previous
