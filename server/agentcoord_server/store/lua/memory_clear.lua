-- Deletes some of an owner's entries (MemoryStore.clear reads the index in batches and calls
-- this per batch, so one call never blocks Redis for long).
-- KEYS[1] key index, KEYS[2] expiry index, KEYS[2 + i] the entry hash of member i.
-- ARGV[i] member i (an entry key).
-- Returns {live entries deleted, index members left}.
local deleted = 0
for i = 3, #KEYS do
  deleted = deleted + redis.call('DEL', KEYS[i])
end
if #ARGV > 0 then
  redis.call('ZREM', KEYS[1], unpack(ARGV))
  redis.call('ZREM', KEYS[2], unpack(ARGV))
end
return {deleted, redis.call('ZCARD', KEYS[1])}
