-- register_worker: records a worker and the SHA-256 of its secret (the secret itself
-- never reaches Redis). KEYS[1]: the worker's hash, KEYS[2]: the workers zset (both
-- global, not sweep keys).
-- ARGV: worker_id, secret_sha256 (the new secret), presented_sha256 (of the secret the
--       caller holds from an earlier registration; '' when none), record_ttl_ms,
--       hostname, slots, gpus, version
-- The record expires record_ttl_ms after the worker's last authenticated call
-- (worker_auth.lua refreshes it). A live record with another secret is kept: another
-- process holds the id. Returns {'ok', ''} or {'in_use', <ms until the record lapses>}.
local id, secret, presented, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if id == nil or id == '' then return redis.error_reply('register_worker: empty worker id') end
if secret == nil or string.len(secret) ~= 64 then
  return redis.error_reply('register_worker: the secret digest must be 64 hex digits')
end
if ttl == nil or ttl <= 0 then return redis.error_reply('register_worker: record_ttl_ms must be a number > 0') end
local held = redis.call('HGET', KEYS[1], 'secret_sha256')
if held and held ~= '' and held ~= presented then
  return {'in_use', tostring(redis.call('PTTL', KEYS[1]))}
end
local now = now_ms()
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'secret_sha256', secret, 'hostname', ARGV[5], 'slots', ARGV[6], 'gpus', ARGV[7],
  'version', ARGV[8], 'registered_unix_ms', now)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now, id)
return {'ok', ''}
