-- Restarts the TTL of a lock its holder holds under a fencing token (LockStore.renew).
-- KEYS[1] the lock's hash (see locks_acquire.lua)
-- ARGV[1] the agent; ARGV[2] the fencing token; ARGV[3] the new TTL (ms)
-- Returns {'ok', holder, token, acquired ms, expires ms} or {'not_held'}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('HMGET', KEYS[1], 'holder', 'token', 'acquired')
if held[1] ~= ARGV[1] or held[2] ~= ARGV[2] then
  return {'not_held'}
end
local ttl = tonumber(ARGV[3])
local expires = now + ttl
redis.call('HSET', KEYS[1], 'expires', expires)
redis.call('PEXPIRE', KEYS[1], ttl)
return {'ok', held[1], held[2], held[3], expires}
