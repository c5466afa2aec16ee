-- submit_finish: the last step of a submission, once every batch landed (and a cancelled
-- sweep's cells were reactivated): clears the submit marker if it is still this
-- submission's, so acquire and the finals loop take the sweep up again.
-- ARGV: fingerprint
-- Returns 'done', 'superseded' (another submission set its own marker since) or 'gone'.
local bad = validate_base(); if bad then return bad end
local fp = ARGV[1]
if fp == nil or fp == '' then return redis.error_reply('submit_finish: empty fingerprint') end
local meta = redis.call('HMGET', k('meta'), 'status', 'submit_fp')
if not meta[1] then return 'gone' end
if meta[2] ~= fp then return 'superseded' end
redis.call('HDEL', k('meta'), 'submit_fp', 'submit_total', 'submit_next', 'submit_file', 'submit_reactivate')
return 'done'
