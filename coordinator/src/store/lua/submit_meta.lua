-- submit_meta: records a sweep's meta (created once; settings updated), sets the submit
-- marker and marks the sweep active. The marker (submit_fp, submit_total, submit_next,
-- submit_file) stays until the submission's last batch landed (submit_finish): while it
-- is there, status says "submitting", acquire leases nothing of the sweep and no final is
-- scheduled, so an interrupted submission never looks like a complete sweep.
-- A submission with the same fingerprint as an interrupted one resumes at its
-- submit_next; any other starts over at cell 0. submit_reactivate = 1 when the sweep was
-- cancelled as this submission began: its cancelled cells go back to pending at the end.
-- It also creates the sweep's metrics stream with the coordinator's consumer group
-- (reading from the start): workers append with XADD ... NOMKSTREAM, which never creates
-- a stream, so progress appended after `tsweep delete` cannot bring the key back.
-- Refused while a delete of the sweep has not finished (its tombstone `deleting` exists).
-- ARGV: name, settings_json, metrics_group, fingerprint, total, file_name
-- Returns {'ok', previous_status ('' for a new sweep), resume_at} or {'deleting'}
local bad = validate_base(); if bad then return bad end
local name, settings = ARGV[1], ARGV[2]
if name == nil or name == '' then return redis.error_reply('submit_meta: empty sweep name') end
if settings == nil then return redis.error_reply('submit_meta: missing settings') end
local group = ARGV[3]
if group == nil or group == '' then return redis.error_reply('submit_meta: missing metrics group') end
local fp, total = ARGV[4], tonumber(ARGV[5])
if fp == nil or fp == '' or total == nil then
  return redis.error_reply('submit_meta: fingerprint and total must be set')
end
if redis.call('EXISTS', k('deleting')) == 1 then return {'deleting'} end
local previous = redis.call('HGET', k('meta'), 'status') or ''
local marker = redis.call('HMGET', k('meta'), 'submit_fp', 'submit_next', 'submit_reactivate')
local resume_at = 0
if marker[1] == fp then
  resume_at = num(marker[2], 0)
else
  local reactivate = 0
  if previous == 'cancelled' or marker[3] == '1' then reactivate = 1 end
  redis.call('HSET', k('meta'), 'submit_fp', fp, 'submit_total', total, 'submit_next', 0,
    'submit_file', ARGV[6] or '', 'submit_reactivate', reactivate)
end
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
return {'ok', previous, tostring(resume_at)}
