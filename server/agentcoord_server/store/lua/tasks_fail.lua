-- FailTask. KEYS: see tasks_common.lua (KEYS[24]: the caller's registration). ARGV: wake
-- channel, task_id, fencing token, agent, error, retryable ('1'/'0'), backoff ms, task TTL
-- ms, claim_next ('1'/'0'), next lease ms, agent TTL ms, next task types… (none: the agent's
-- capabilities).
-- Returns {'ok', task, next task or false} | {'not_found'} | {'lease_lost', why} |
-- {'no_types'} (claim_next without types or capabilities: nothing was done).
-- The claim_next lease is taken after the failure is settled, in the same step: with no
-- backoff the failed task is pending again and may be the one claimed.
local id, token, agent, err = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local retryable, backoff, ttl = ARGV[6] == '1', tonumber(ARGV[7]), tonumber(ARGV[8])
local want_next, lease_ms, agent_ttl = ARGV[9] == '1', tonumber(ARGV[10]), tonumber(ARGV[11])
local now = now_ms()

local types = want_next and claim_types({unpack(ARGV, 12)}) or nil
if want_next and not types then
  return {'no_types'}
end

local t = load(id, now)
local refused = check_lease(t, token, agent, now)
if refused then
  return refused
end
t.next, t.next_token = nil, nil
settle_failure(t, now, ttl, err, retryable, backoff)
local next_task = false
if want_next then
  -- The next task may be this one, claimed again: claim_next returns it as it now is.
  next_task, t = claim_next(t, agent, types, lease_ms, ttl, agent_ttl, now)
end
return {'ok', flat(t), next_task}
