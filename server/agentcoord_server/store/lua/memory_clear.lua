-- Deletes some of an owner's entries, emitting a DELETE event per live one (MemoryStore.clear
-- reads the index in batches and calls this per batch, so one call never blocks Redis for
-- long; memory_events.lua is prepended).
-- KEYS[1] key index, KEYS[2] expiry index, KEYS[3..7] the namespace keys of memory_events.lua,
-- KEYS[7 + i] the entry hash of member i.
-- ARGV[1] now ms, ARGV[2] events the log keeps, ARGV[3] owner, ARGV[3 + i] member i (a key).
-- Returns {live entries deleted, index members left}.
local now, owner = tonumber(ARGV[1]), ARGV[3]
namespace_keys(3, ARGV[2])
local deleted = 0
for i = 8, #KEYS do
  local key = ARGV[i - 4]
  if not expire_due(KEYS[i], KEYS[1], KEYS[2], owner, key, now) then
    if redis.call('DEL', KEYS[i]) == 1 then
      deleted = deleted + 1
      emit('D', owner, key, now, '', nil, nil)
    end
    redis.call('ZREM', NS.expiry, owner .. '/' .. key)
    uncount(owner .. '/' .. key)
  end
end
if #ARGV > 3 then
  redis.call('ZREM', KEYS[1], unpack(ARGV, 4))
  redis.call('ZREM', KEYS[2], unpack(ARGV, 4))
end
return {deleted, redis.call('ZCARD', KEYS[1])}
