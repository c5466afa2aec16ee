-- worker_auth: checks the secret a worker presents and keeps its record alive.
-- KEYS[1]: the worker's hash (global, not a sweep key).
-- ARGV: presented_sha256 ('' when the call carried no secret), record_ttl_ms
-- Returns 'ok' (record refreshed for record_ttl_ms), 'unregistered' (no record with a
-- secret: never registered, lapsed, or lost with Redis' data) or 'wrong'.
local ttl = tonumber(ARGV[2])
if ttl == nil or ttl <= 0 then return redis.error_reply('worker_auth: record_ttl_ms must be a number > 0') end
local held = redis.call('HGET', KEYS[1], 'secret_sha256')
if not held or held == '' then return 'unregistered' end
if held ~= ARGV[1] then return 'wrong' end
redis.call('PEXPIRE', KEYS[1], ttl)
return 'ok'
