-- Deletes one entry and its index members and emits its DELETE event (MemoryStore.delete;
-- memory_events.lua is prepended).
-- KEYS[1] entry hash, KEYS[2] key index, KEYS[3] expiry index, KEYS[4..8] the namespace keys of
-- memory_events.lua
-- ARGV[1] the entry's key, ARGV[2] owner, ARGV[3] now ms, ARGV[4] events the log keeps.
-- Returns 1 if a live entry was deleted, 0 if there was none (an entry whose TTL ran out
-- and that the sweep had not reached yet gets its EXPIRE event instead).
local key, owner, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
namespace_keys(4, ARGV[4])
if expire_due(KEYS[1], KEYS[2], KEYS[3], owner, key, now) then
  return 0
end
local deleted = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], key)
redis.call('ZREM', KEYS[3], key)
redis.call('ZREM', NS.expiry, owner .. '/' .. key)
uncount(owner .. '/' .. key)
if deleted == 1 then emit('D', owner, key, now, '', nil, nil) end
return deleted
