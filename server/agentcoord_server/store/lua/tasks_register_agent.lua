-- RegisterAgent. ARGV: prefix, agent, capabilities (comma-joined ids), agent TTL ms.
-- Returns the registration hash (HGETALL).
local P, agent, caps, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_ms()
local akey = P .. 'agents:a:' .. agent
redis.call('DEL', akey)
redis.call('HSET', akey, 'id', agent, 'caps', caps, 'registered', now, 'seen', now)
redis.call('PEXPIRE', akey, ttl)
local index = P .. 'agents:index'
redis.call('ZADD', index, 0, agent)
extend_ttl(index, ttl)
return redis.call('HGETALL', akey)
