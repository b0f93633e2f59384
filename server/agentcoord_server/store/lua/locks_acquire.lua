-- Acquires a lock for an agent unless it is held (LockStore.acquire).
-- KEYS[1] the lock's hash {holder, token, acquired, expires (ms)}, living until `expires`
-- KEYS[2] the namespace's fencing counter (no TTL: tokens only grow, even across expiries)
-- ARGV[1] the acquiring agent; ARGV[2] the TTL (ms)
-- Returns {'ok', holder, token, acquired ms, expires ms}, or {'held', holder, token,
-- acquired ms, expires ms, ms until it expires} (the waiter sleeps at most that long).
-- Times are Redis server time; an expired lock is gone (Redis expires the key), so it is free.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('HMGET', KEYS[1], 'holder', 'token', 'acquired', 'expires')
if held[1] then
  -- Held by anyone, the caller included: a lock does not re-enter, so two tasks of one agent
  -- exclude each other too.
  return {'held', held[1], held[2], held[3], held[4], redis.call('PTTL', KEYS[1])}
end
local ttl = tonumber(ARGV[2])
local token = redis.call('INCR', KEYS[2])
local expires = now + ttl
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'token', token, 'acquired', now, 'expires', expires)
redis.call('PEXPIRE', KEYS[1], ttl)
return {'ok', ARGV[1], token, now, expires}
