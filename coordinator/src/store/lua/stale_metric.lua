-- stale_metric: counts a metrics record of an attempt that no longer holds the lease.
-- ARGV: none. Returns the new stale_reports count.
local bad = validate_base(); if bad then return bad end
if not redis.call('HGET', k('meta'), 'status') then return redis.error_reply('stale_metric: sweep not found') end
return tostring(redis.call('HINCRBY', k('meta'), 'stale_reports', 1))
