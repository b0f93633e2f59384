-- FailTask. ARGV: prefix, task_id, fencing token, agent, error, retryable ('1'/'0'),
-- backoff ms, task TTL ms.
-- Returns {'ok', task} | {'not_found'} | {'lease_lost', why}.
local P, id, token, agent, err = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local retryable, backoff, ttl = ARGV[6] == '1', tonumber(ARGV[7]), tonumber(ARGV[8])
local now = now_ms()
local tkey = P .. 'tasks:t:' .. id
local refused = check_lease(tkey, token, agent, now)
if refused then
  return refused
end
settle_failure(P, id, now, ttl, err, retryable, backoff)
return {'ok', redis.call('HGETALL', tkey)}
