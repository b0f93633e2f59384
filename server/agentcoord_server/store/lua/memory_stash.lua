-- Stashes N entries of one owner at once and indexes them (MemoryStore.stash).
-- KEYS[1] the owner's key index (zset, all scores 0, ordered by key: listing)
-- KEYS[2] the owner's expiry index (zset, score = expire time ms: pruning)
-- KEYS[3] the namespace's owner index (zset, member owner, score = its latest expire ms:
--         GetServerStats finds the owners to count through it)
-- KEYS[3+i] entry i's hash {v = value bytes, t = stash ms, e = expire ms}
-- ARGV[1] now (ms since the epoch); then per entry i: ARGV[3i-1] key, ARGV[3i] value, ARGV[3i+1] ttl ms;
-- ARGV[#ARGV] the owner
-- Returns the expire time (ms) of each entry, in order.
local now = tonumber(ARGV[1])
local out = {}
local longest = 0
for i = 1, #KEYS - 3 do
  local key, ttl = ARGV[3 * i - 1], tonumber(ARGV[3 * i + 1])
  local expire = now + ttl
  -- The hash always has the same three fields, so HSET overwrites a previous value completely.
  redis.call('HSET', KEYS[3 + i], 'v', ARGV[3 * i], 't', ARGV[1], 'e', expire)
  redis.call('PEXPIRE', KEYS[3 + i], ttl)
  redis.call('ZADD', KEYS[1], 0, key)
  redis.call('ZADD', KEYS[2], expire, key)
  if ttl > longest then longest = ttl end
  out[i] = expire
end
-- Lazy, bounded pruning: every write drops up to 100 index members whose entries have expired,
-- so an owner's indexes stay close to its live entries without a background sweeper.
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
-- The owner index keeps each owner at its latest expiry (GT: never lowered) and drops owners
-- whose entries have all expired, so it holds about the owners with live entries.
redis.call('ZADD', KEYS[3], 'GT', now + longest, ARGV[#ARGV])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
-- The indexes live as long as the longest-lived entry they list, so an idle owner leaves nothing.
for j = 1, 3 do
  if redis.call('PTTL', KEYS[j]) < longest then redis.call('PEXPIRE', KEYS[j], longest) end
end
return out
