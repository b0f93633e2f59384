-- CompleteTask. ARGV: prefix, task_id, fencing token, agent, result JSON, task TTL ms,
-- recent summaries kept, largest result kept in a summary (bytes), claim_next ('1'/'0'),
-- next lease ms, agent TTL ms, next task types… (none: the agent's capabilities).
-- Returns {'ok', task, next task or false} | {'not_found'} | {'lease_lost', why} |
-- {'no_types'} (claim_next without types or capabilities: nothing was done).
-- Counts are HINCRBY'd here, in the same atomic step, so AggregateResults is exact. The
-- claim_next lease is taken in the same step too, so a task cycle is one round trip; a stale
-- fencing token completes nothing and claims nothing.
local P, id, token, agent, result = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ttl, recent_n, summary_max = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local want_next, lease_ms, agent_ttl = ARGV[9] == '1', tonumber(ARGV[10]), tonumber(ARGV[11])
local now = now_ms()
local tkey = P .. 'tasks:t:' .. id

local types = want_next and claim_types(P, agent, {unpack(ARGV, 12)}) or nil
if want_next and not types then
  return {'no_types'}
end

local f = redis.call('HMGET', tkey, 'status', 'token', 'assignee')
if f[1] == 'completed' and f[2] == token and f[3] == agent then
  -- A repeat of our own completion: the same answer, the same next task if still ours.
  local again = false
  if want_next then
    again = claimed_next(P, tkey, agent) or false
  end
  return {'ok', redis.call('HGETALL', tkey), again}
end
local refused = check_lease(tkey, token, agent, now)
if refused then
  return refused
end

local ttype = redis.call('HGET', tkey, 'type')
redis.call('HSET', tkey, 'status', 'completed', 'result', result, 'completed', now,
  'updated', now)
redis.call('HDEL', tkey, 'next', 'next_token')
redis.call('ZREM', P .. 'tasks:l:' .. ttype, id)
set_task_ttl(P, tkey, ttl, now)
release_dependents(P, id, false, now, ttl)

local function count(key, field)
  redis.call('HINCRBY', key, field, 1)
  extend_ttl(key, ttl)
end
count(P .. 'tasks:stats', 'total')
count(P .. 'tasks:stats:agents', agent)
count(P .. 'tasks:stats:types', ttype)
count(P .. 'tasks:stats:agents:' .. ttype, agent)

local kept = result
if #result > summary_max then
  kept = false
end
local summary = cjson.encode({id = id, type = ttype, agent = agent, at = now, result = kept})
for _, key in ipairs({P .. 'tasks:recent', P .. 'tasks:recent:' .. ttype}) do
  redis.call('LPUSH', key, summary)
  redis.call('LTRIM', key, 0, recent_n - 1)
  extend_ttl(key, ttl)
end
local next_task = false
if want_next then
  next_task = claim_next(P, tkey, agent, types, lease_ms, ttl, agent_ttl, now)
end
return {'ok', redis.call('HGETALL', tkey), next_task}
