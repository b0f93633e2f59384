-- Restarts one entry's TTL without rewriting it (MemoryStore.touch; memory_events.lua is
-- prepended). No event: the value and revision stay.
-- KEYS[1] entry hash, KEYS[2] key index, KEYS[3] expiry index, KEYS[4] the namespace's owner
-- index, KEYS[5..9] the namespace keys of memory_events.lua
-- ARGV[1] key, ARGV[2] owner, ARGV[3] now ms, ARGV[4] events the log keeps, ARGV[5] ttl ms
-- ('' : the entry's own), ARGV[6] ttl ms for an entry stashed without one.
-- Returns {'OK', earliest, stash ms, expire ms, size, revision} (earliest as memory_stash) or
-- {'MISSING'}.
local key, owner, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
namespace_keys(5, ARGV[4])
if expire_due(KEYS[1], KEYS[2], KEYS[3], owner, key, now)
    or redis.call('EXISTS', KEYS[1]) == 0 then
  return {'MISSING'}
end
local ttl = tonumber(ARGV[5])
if not ttl then ttl = tonumber(redis.call('HGET', KEYS[1], 'l') or ARGV[6]) end
local expire = now + ttl
local before = earliest()
redis.call('HSET', KEYS[1], 'e', expire, 'l', ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], 0, key)
redis.call('ZADD', KEYS[3], expire, key)
redis.call('ZADD', NS.expiry, expire, owner .. '/' .. key)
redis.call('ZADD', KEYS[4], 'GT', expire, owner)
for j = 2, 4 do
  if redis.call('PTTL', KEYS[j]) < ttl then redis.call('PEXPIRE', KEYS[j], ttl) end
end
local moved = 0
if not before or expire < before then moved = expire end
local meta = redis.call('HMGET', KEYS[1], 't', 'r')
return {'OK', moved, meta[1], expire, redis.call('HSTRLEN', KEYS[1], 'v'), meta[2] or 0}
