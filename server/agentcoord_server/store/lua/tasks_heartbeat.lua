-- Heartbeat. KEYS: see tasks_common.lua (KEYS[24]: the caller's registration). ARGV: wake
-- channel, agent, agent TTL ms.
-- Returns the registration hash (HGETALL), empty if the agent is not registered; when tasks
-- the agent held were cancelled since its last heartbeat, {'cancelled', ids (comma-joined),
-- registration} — once: the notice is cleared (the registration is extended either way).
local agent, ttl = ARGV[2], tonumber(ARGV[3])
if redis.call('EXISTS', K_AGENT) == 0 then
  return {}
end
redis.call('HSET', K_AGENT, 'seen', now_ms())
redis.call('PEXPIRE', K_AGENT, ttl)
redis.call('ZADD', K_AGENTS, 0, agent)
extend_ttl(K_AGENTS, ttl)
local cx = redis.call('HGET', K_CX, agent)
if cx then
  redis.call('HDEL', K_CX, agent)
  return {'cancelled', cx, redis.call('HGETALL', K_AGENT)}
end
return redis.call('HGETALL', K_AGENT)
