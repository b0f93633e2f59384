-- Deletes one entry and its index members (MemoryStore.delete).
-- KEYS[1] entry hash, KEYS[2] key index, KEYS[3] expiry index; ARGV[1] the entry's key.
-- Returns 1 if a live entry was deleted, 0 if there was none.
local deleted = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return deleted
