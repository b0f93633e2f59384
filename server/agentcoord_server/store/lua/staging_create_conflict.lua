-- CreateConflict: store a new open conflict with its TTL and index it, atomically.
-- KEYS[1] conflict hash, KEYS[2] conflict index (sorted set, all scores 0, by member),
-- KEYS[3] conflict expiry index (sorted set, score = expire ms, member = index member: pruning)
-- KEYS[4] open conflicts (sorted set, score = expire ms, member = conflict id: counting)
-- ARGV[1] creator, ARGV[2] ttl ms, ARGV[3] conflict id, ARGV[4..] field/value pairs.
-- Returns {'OK', conflict hash as a flat array} or {'EXISTS'}; nothing is written then.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'EXISTS'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
-- Members sort by (create time, id): ids hold no ':'.
local idx = string.format('%015d', now) .. ':' .. ARGV[3]
redis.call('HSET', KEYS[1], 'conflict_id', ARGV[3], 'created_by', ARGV[1], 'create_ms', now,
  'expire_ms', now + ttl, 'state', 'open', 'idx', idx, unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], 0, idx)
redis.call('ZADD', KEYS[3], now + ttl, idx)
redis.call('ZADD', KEYS[4], now + ttl, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
-- Lazy, bounded pruning (as in staging_stage.lua): up to 100 members of expired conflicts.
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - 100), 'LIMIT', 0, 100)
if #gone > 0 then
  redis.call('ZREM', KEYS[2], unpack(gone))
  redis.call('ZREM', KEYS[3], unpack(gone))
end
for j = 2, 4 do
  if redis.call('PTTL', KEYS[j]) < ttl then
    redis.call('PEXPIRE', KEYS[j], ttl)
  end
end
return {'OK', redis.call('HGETALL', KEYS[1])}
