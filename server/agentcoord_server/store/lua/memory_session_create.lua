-- Creates a team session with its creator as the first participant (MemoryStore.create_session).
-- KEYS[1] info hash {p = purpose, m = metadata bytes, b = created by, c = create ms, e = expire ms}
-- KEYS[2] participants set, KEYS[3] shared context hash
-- KEYS[4] session index (zset, scores 0, ordered by id), KEYS[5] session expiry index (zset)
-- KEYS[6] the namespace's working-memory expiry set, KEYS[7] its revision, KEYS[8] its event
-- log (memory_events.lua is prepended: the session's expiry is swept like an entry's, member
-- '/<session id>', and emits one EXPIRE event for its shared context)
-- ARGV[1] session id, ARGV[2] purpose, ARGV[3] metadata, ARGV[4] creator, ARGV[5] now ms,
-- ARGV[6] ttl ms, ARGV[7] events the log keeps
-- Returns {'EXISTS'} and changes nothing if the session is live, else {'OK', expire ms,
-- earliest} (earliest as memory_stash.lua).
local now, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
NS.expiry, NS.rev, NS.log, NS.history = KEYS[6], KEYS[7], KEYS[8], ARGV[7]
local member = '/' .. ARGV[1]
local live = redis.call('EXISTS', KEYS[1]) == 1
local due = redis.call('ZSCORE', NS.expiry, member)
if due and (tonumber(due) <= now or not live) then
  -- The previous session of this id ran out and the sweep has not reached it yet: its
  -- EXPIRE comes first, once.
  redis.call('ZREM', NS.expiry, member)
  emit('E', '', '', now, ARGV[1], nil, nil)
  live = false
end
if live then return {'EXISTS'} end
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
local before = earliest()
redis.call('ZADD', NS.expiry, expire, member)
if not before or expire < before then return {'OK', expire, expire} end
return {'OK', expire, 0}
