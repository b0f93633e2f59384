-- RejectPattern: remove a staged pattern and keep a rejection record for ttl ms, atomically.
-- KEYS[1] staged hash, KEYS[2] staged index, KEYS[3] rejection hash, KEYS[4] staged expiry index
-- ARGV[1] validator, ARGV[2] reason, ARGV[3] ttl ms
-- Returns {'OK', rejection hash as a flat array} or {'NOT_FOUND'}; nothing is written then.
local f = redis.call('HMGET', KEYS[1], 'pattern_id', 'pattern_type', 'name', 'author',
  'revision', 'confidence', 'idx')
if not f[7] then
  return {'NOT_FOUND'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'pattern_id', f[1], 'pattern_type', f[2], 'name', f[3],
  'author', f[4], 'revision', f[5], 'confidence', f[6], 'rejected_by', ARGV[1],
  'reason', ARGV[2], 'reject_ms', now, 'expire_ms', now + ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], f[7])
redis.call('ZREM', KEYS[4], f[7])
return {'OK', redis.call('HGETALL', KEYS[3])}
