-- CompleteTask. KEYS: see tasks_common.lua (KEYS[24]: the caller's registration). ARGV: wake
-- channel, task_id, fencing token, agent, result JSON, task TTL ms, recent summaries kept,
-- largest result kept in a summary (bytes), claim_next ('1'/'0'), next lease ms, agent TTL
-- ms, next task types… (none: the agent's capabilities).
-- Returns {'ok', task, next task or false} | {'not_found'} | {'lease_lost', why} |
-- {'no_types'} (claim_next without types or capabilities: nothing was done).
-- Counts are HINCRBY'd here, in the same atomic step, so AggregateResults is exact. The
-- claim_next lease is taken in the same step too, so a task cycle is one round trip; a stale
-- fencing token completes nothing and claims nothing.
local id, token, agent, result = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ttl, recent_n, summary_max = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local want_next, lease_ms, agent_ttl = ARGV[9] == '1', tonumber(ARGV[10]), tonumber(ARGV[11])
local now = now_ms()

local types = want_next and claim_types({unpack(ARGV, 12)}) or nil
if want_next and not types then
  return {'no_types'}
end

local t = load(id, now)
if t and t.status == 'completed' and t.token == token and t.assignee == agent then
  -- A repeat of our own completion: the same answer, the same next task if still ours.
  local again = false
  if want_next then
    again = claimed_next(t, agent, now) or false
  end
  return {'ok', flat(t), again}
end
local refused = check_lease(t, token, agent, now)
if refused then
  return refused
end

local ttype = t.type
unplace(t)
t.status, t.result, t.completed, t.updated = 'completed', result, now, now
t.next, t.next_token = nil, nil
set_task_ttl(t, ttl, now)
save(t)
release_dependents(id, false, now, ttl)

local function count(key, field)
  redis.call('HINCRBY', key, field, 1)
  extend_ttl(key, ttl)
end
count(K_STATS, 'total')
count(K_STATS_AGENTS, agent)
count(K_STATS_TYPES, ttype)
count(K_STATS_TYPE_AGENTS, ttype .. ':' .. agent)

local kept = result
if #result > summary_max then
  kept = false
end
local summary = cjson.encode({id = id, type = ttype, agent = agent, at = now, result = kept})
redis.call('LPUSH', K_RECENT, summary)
redis.call('LTRIM', K_RECENT, 0, recent_n - 1)
extend_ttl(K_RECENT, ttl)
-- The type's ring: the n-th summary in slot n mod recent_n.
local n = redis.call('HINCRBY', K_RECENT_TYPES, ttype .. ':n', 1)
redis.call('HSET', K_RECENT_TYPES, ttype .. ':' .. ((n - 1) % recent_n), summary)
extend_ttl(K_RECENT_TYPES, ttl)

local next_task = false
if want_next then
  next_task, t = claim_next(t, agent, types, lease_ms, ttl, agent_ttl, now)
end
return {'ok', flat(t), next_task}
