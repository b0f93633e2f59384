-- PromotePattern: move a staged pattern into the library (no TTL), atomically.
-- KEYS[1] staged hash, KEYS[2] staged index, KEYS[3] library hash, KEYS[4] library index,
-- KEYS[5] staged expiry index
-- ARGV[1] validator, ARGV[2] minimum confidence or '', ARGV[3] note,
-- ARGV[4] expected revision or '', ARGV[5] pattern id
-- Returns {'OK', library hash as a flat array} or {'NOT_FOUND'} or
-- {'BELOW_THRESHOLD', confidence} or {'REVISION_MISMATCH', revision}; nothing is written then.
local f = redis.call('HMGET', KEYS[1], 'confidence', 'revision', 'idx')
if not f[3] then
  return {'NOT_FOUND'}
end
if ARGV[4] ~= '' and f[2] ~= ARGV[4] then
  return {'REVISION_MISMATCH', f[2]}
end
if ARGV[2] ~= '' and tonumber(f[1]) < tonumber(ARGV[2]) then
  return {'BELOW_THRESHOLD', f[1]}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], unpack(all))
redis.call('HDEL', KEYS[3], 'expire_ms')
redis.call('HSET', KEYS[3], 'idx', ARGV[5], 'promoted_by', ARGV[1], 'promote_ms', now,
  'note', ARGV[3])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], f[3])
redis.call('ZREM', KEYS[5], f[3])
redis.call('ZADD', KEYS[4], 0, ARGV[5])
return {'OK', redis.call('HGETALL', KEYS[3])}
