-- StagePattern: create or replace (by its author only) a staged pattern, atomically.
-- KEYS[1] staged pattern hash, KEYS[2] staged index (sorted set, all scores 0, by member),
-- KEYS[3] staged expiry index (sorted set, score = expire ms, member = index member: pruning)
-- ARGV[1] author, ARGV[2] ttl ms, ARGV[3] order prefix (inverted confidence, 16 hex digits),
-- ARGV[4] pattern id, ARGV[5..] field/value pairs of the pattern's content.
-- Returns {'OK', revision, stage_ms} or {'OTHER_AUTHOR', author}; nothing is written then.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local cur = redis.call('HMGET', KEYS[1], 'author', 'revision', 'idx')
local revision = 1
if cur[1] then
  if cur[1] ~= ARGV[1] then
    return {'OTHER_AUTHOR', cur[1]}
  end
  revision = tonumber(cur[2]) + 1
  redis.call('ZREM', KEYS[2], cur[3])
  redis.call('ZREM', KEYS[3], cur[3])
  redis.call('DEL', KEYS[1])
end
-- Members sort by (confidence desc, stage time asc, id): ids hold no ':'.
local idx = ARGV[3] .. ':' .. string.format('%015d', now) .. ':' .. ARGV[4]
redis.call('HSET', KEYS[1], 'pattern_id', ARGV[4], 'author', ARGV[1], 'revision', revision,
  'stage_ms', now, 'expire_ms', now + ttl, 'idx', idx, unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], 0, idx)
redis.call('ZADD', KEYS[3], now + ttl, idx)
-- Lazy, bounded pruning: while a namespace keeps staging its index stays alive, so each write
-- drops up to 100 members whose patterns expired (100 ms past their expiry, clear of any
-- rounding against Redis's own expiry clock) even if no list ever walks over them.
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - 100), 'LIMIT', 0, 100)
if #gone > 0 then
  redis.call('ZREM', KEYS[2], unpack(gone))
  redis.call('ZREM', KEYS[3], unpack(gone))
end
-- The indexes never outlive their newest entry, so an idle namespace leaves nothing behind.
for j = 2, 3 do
  if redis.call('PTTL', KEYS[j]) < ttl then
    redis.call('PEXPIRE', KEYS[j], ttl)
  end
end
return {'OK', revision, now}
