-- Creates a team session with its creator as the first participant (MemoryStore.create_session).
-- KEYS[1] info hash {p = purpose, m = metadata bytes, b = created by, c = create ms, e = expire ms}
-- KEYS[2] participants set, KEYS[3] shared context hash
-- KEYS[4] session index (zset, scores 0, ordered by id), KEYS[5] session expiry index (zset)
-- ARGV[1] session id, ARGV[2] purpose, ARGV[3] metadata, ARGV[4] creator, ARGV[5] now ms,
-- ARGV[6] ttl ms
-- Returns {'EXISTS'} and changes nothing if the session is live, else {'OK', expire ms}.
if redis.call('EXISTS', KEYS[1]) == 1 then return {'EXISTS'} end
local now, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local expire = now + ttl
-- All of a session's keys share one TTL, so nothing of an expired one can be left; be sure anyway.
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'p', ARGV[2], 'm', ARGV[3], 'b', ARGV[4], 'c', ARGV[5], 'e', expire)
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[4], 0, ARGV[1])
redis.call('ZADD', KEYS[5], expire, ARGV[1])
-- Lazy, bounded pruning of expired sessions from the indexes (see memory_stash.lua).
local gone = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 100)
if #gone > 0 then
  redis.call('ZREM', KEYS[4], unpack(gone))
  redis.call('ZREM', KEYS[5], unpack(gone))
end
for j = 4, 5 do
  if redis.call('PTTL', KEYS[j]) < ttl then redis.call('PEXPIRE', KEYS[j], ttl) end
end
return {'OK', expire}
