-- Deletes up to ARGV[2] of an owner's entries, in key order (MemoryStore.clear calls it until
-- none remain, so one call never blocks Redis for long).
-- KEYS[1] key index, KEYS[2] expiry index; ARGV[1] the owner's entry key prefix, ARGV[2] batch size.
-- Entry keys are built here from ARGV[1]; they share KEYS' {namespace} hash tag, hence one slot.
-- Returns {live entries deleted, index members left}.
local members = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local deleted = 0
for _, key in ipairs(members) do
  deleted = deleted + redis.call('DEL', ARGV[1] .. key)
end
if #members > 0 then
  redis.call('ZREM', KEYS[1], unpack(members))
  redis.call('ZREM', KEYS[2], unpack(members))
end
return {deleted, redis.call('ZCARD', KEYS[1])}
