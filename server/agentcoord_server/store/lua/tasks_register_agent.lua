-- RegisterAgent. KEYS: see tasks_common.lua (KEYS[24]: the caller's registration). ARGV: wake
-- channel, agent, capabilities (comma-joined ids), agent TTL ms.
-- Returns the registration hash (HGETALL). A new registration starts without cancellation
-- notices (agents:cx), as it did when they were fields of the registration it replaces.
local agent, caps, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_ms()
redis.call('DEL', K_AGENT)
redis.call('HDEL', K_CX, agent)
redis.call('HSET', K_AGENT, 'id', agent, 'caps', caps, 'registered', now, 'seen', now)
redis.call('PEXPIRE', K_AGENT, ttl)
redis.call('ZADD', K_AGENTS, 0, agent)
extend_ttl(K_AGENTS, ttl)
return redis.call('HGETALL', K_AGENT)
