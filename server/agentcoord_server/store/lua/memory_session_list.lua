-- Examines some members of the namespace's session index (MemoryStore.list_sessions, via
-- paging.py).
-- KEYS[1] session index, KEYS[2] session expiry index, then per member i the session's info
-- hash (KEYS[1 + 2i]) and participant set (KEYS[2 + 2i]).
-- ARGV[i] member i (a session id).
-- Expired sessions are removed from both indexes.
-- Returns per member {purpose, metadata, created by, create ms, expire ms, {participants}},
-- or {} if it expired.
local out = {}
for i, id in ipairs(ARGV) do
  local info = redis.call('HMGET', KEYS[1 + 2 * i], 'p', 'm', 'b', 'c', 'e')
  if info[1] then
    local members = redis.call('SMEMBERS', KEYS[2 + 2 * i])
    out[i] = {info[1], info[2], info[3], info[4], info[5], members}
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    out[i] = {}
  end
end
return out
