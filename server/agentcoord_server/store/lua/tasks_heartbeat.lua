-- Heartbeat. ARGV: prefix, agent, agent TTL ms.
-- Returns the registration hash (HGETALL), empty if the agent is not registered.
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
return redis.call('HGETALL', akey)
