-- touch_worker: records that a worker was seen now (Redis TIME) and drops workers not
-- seen for `forget_ms`. KEYS[1]: the workers zset (global, not a sweep key).
-- ARGV: worker_id ('' only trims), forget_ms
-- Returns the number of workers seen within forget_ms.
local now = now_ms()
local forget = tonumber(ARGV[2])
if forget == nil or forget <= 0 then return redis.error_reply('touch_worker: forget_ms must be a number > 0') end
if ARGV[1] ~= nil and ARGV[1] ~= '' then redis.call('ZADD', KEYS[1], now, ARGV[1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - forget))
return tostring(redis.call('ZCARD', KEYS[1]))
