-- Deletes some of an owner's entries, emitting a DELETE event per live one (MemoryStore.clear
-- reads the index in batches and calls this per batch, so one call never blocks Redis for
-- long; memory_events.lua is prepended).
-- KEYS[1] key index, KEYS[2] expiry index, KEYS[3] the namespace's expiry set, KEYS[4] its
-- revision, KEYS[5] its event log, KEYS[5 + i] the entry hash of member i.
-- ARGV[1] now ms, ARGV[2] events the log keeps, ARGV[3] owner, ARGV[3 + i] member i (a key).
-- Returns {live entries deleted, index members left}.
local now, history, owner = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local deleted = 0
for i = 6, #KEYS do
  local key = ARGV[i - 2]
  if not expire_due(KEYS[3], KEYS[4], KEYS[5], history, KEYS[i], KEYS[1], KEYS[2], owner, key,
                    now) then
    if redis.call('DEL', KEYS[i]) == 1 then
      deleted = deleted + 1
      emit(KEYS[4], KEYS[5], history, 'D', owner, key, now, '', nil, nil)
    end
    redis.call('ZREM', KEYS[3], owner .. '/' .. key)
  end
end
if #ARGV > 3 then
  redis.call('ZREM', KEYS[1], unpack(ARGV, 4))
  redis.call('ZREM', KEYS[2], unpack(ARGV, 4))
end
return {deleted, redis.call('ZCARD', KEYS[1])}
