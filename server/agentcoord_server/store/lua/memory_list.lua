-- Examines some members of an owner's key index (MemoryStore.list_entries, via paging.py).
-- KEYS[1] key index, KEYS[2] expiry index, KEYS[2 + i] the entry hash of member i.
-- ARGV[i] member i (an entry key).
-- Members whose entry has expired are removed from both indexes (lazy pruning).
-- Returns per member {stash ms, expire ms, value size in bytes, revision}, or {} if it expired.
local out = {}
for i, key in ipairs(ARGV) do
  local entry = KEYS[2 + i]
  local meta = redis.call('HMGET', entry, 't', 'e', 'r')
  if meta[1] then
    out[i] = {meta[1], meta[2], redis.call('HSTRLEN', entry, 'v'), meta[3] or 0}
  else
    redis.call('ZREM', KEYS[1], key)
    redis.call('ZREM', KEYS[2], key)
    out[i] = {}
  end
end
return out
