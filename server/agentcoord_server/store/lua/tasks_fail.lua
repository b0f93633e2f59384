-- FailTask. ARGV: prefix, task_id, fencing token, agent, error, retryable ('1'/'0'),
-- backoff ms, task TTL ms, claim_next ('1'/'0'), next lease ms, agent TTL ms, next task
-- types… (none: the agent's capabilities).
-- Returns {'ok', task, next task or false} | {'not_found'} | {'lease_lost', why} |
-- {'no_types'} (claim_next without types or capabilities: nothing was done).
-- The claim_next lease is taken after the failure is settled, in the same step: with no
-- backoff the failed task is pending again and may be the one claimed.
local P, id, token, agent, err = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local retryable, backoff, ttl = ARGV[6] == '1', tonumber(ARGV[7]), tonumber(ARGV[8])
local want_next, lease_ms, agent_ttl = ARGV[9] == '1', tonumber(ARGV[10]), tonumber(ARGV[11])
local now = now_ms()
local tkey = P .. 'tasks:t:' .. id

local types = want_next and claim_types(P, agent, {unpack(ARGV, 12)}) or nil
if want_next and not types then
  return {'no_types'}
end

local refused = check_lease(tkey, token, agent, now)
if refused then
  return refused
end
settle_failure(P, id, now, ttl, err, retryable, backoff)
redis.call('HDEL', tkey, 'next', 'next_token')
local next_task = false
if want_next then
  next_task = claim_next(P, tkey, agent, types, lease_ms, ttl, agent_ttl, now)
end
-- HGETALL after the claim: the next task may be this one, claimed again.
return {'ok', redis.call('HGETALL', tkey), next_task}
