-- Heartbeat. ARGV: prefix, agent, agent TTL ms.
-- Returns the registration hash (HGETALL), empty if the agent is not registered; when tasks
-- the agent held were cancelled since its last heartbeat, {'cancelled', ids (comma-joined),
-- registration} — once: the notice is cleared (the registration is extended either way).
local P, agent, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local akey = P .. 'agents:a:' .. agent
if redis.call('EXISTS', akey) == 0 then
  return {}
end
redis.call('HSET', akey, 'seen', now_ms())
redis.call('PEXPIRE', akey, ttl)
local index = P .. 'agents:index'
redis.call('ZADD', index, 0, agent)
extend_ttl(index, ttl)
local cx = redis.call('HGET', akey, 'cx')
if cx then
  redis.call('HDEL', akey, 'cx')
  return {'cancelled', cx, redis.call('HGETALL', akey)}
end
return redis.call('HGETALL', akey)
