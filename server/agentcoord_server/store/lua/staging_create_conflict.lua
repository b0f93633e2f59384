-- CreateConflict: store a new open conflict with its TTL and index it, atomically.
-- KEYS[1] conflict hash, KEYS[2] conflict index (sorted set, all scores 0, by member)
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
if redis.call('PTTL', KEYS[2]) < ttl then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return {'OK', redis.call('HGETALL', KEYS[1])}
