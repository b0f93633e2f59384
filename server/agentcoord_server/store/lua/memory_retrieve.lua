-- Reads N entries of one owner (MemoryStore.retrieve): KEYS[i] entry hash i.
-- Returns per key {value bytes, stash ms, expire ms, revision}, with false fields for a
-- missing entry.
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('HMGET', key, 'v', 't', 'e', 'r')
end
return out
