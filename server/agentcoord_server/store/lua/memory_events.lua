-- Shared by the working-memory scripts that change entries (prepended by load_script's
-- prelude). Every change bumps the namespace's revision and appends its event to the
-- namespace's event log in the same script, so an event is never lost nor written without
-- its change, and revisions (the log's stream ids, '<revision>-0') never repeat.
--   log        ac:{ns}:memory-log      STREAM  k kind (P put, D delete, E expire), o owner,
--                                              y key, t ms, s session (context items),
--                                              v value bytes + e expire ms (P only)
--   revision   ac:{ns}:memory-rev      STRING  the last revision (no TTL: never reused)
--   expiry     ac:{ns}:memory-expiry   ZSET    member '<owner>/<key>', score expire ms: the
--                                              sweep emits EXPIRE for due members

local function emit(rev_key, log_key, history, kind, owner, key, now, session, value, expire)
  local rev = redis.call('INCR', rev_key)
  local fields = {'k', kind, 'o', owner, 'y', key, 't', now}
  if session ~= '' then
    fields[#fields + 1] = 's'
    fields[#fields + 1] = session
  end
  if value then
    fields[#fields + 1] = 'v'
    fields[#fields + 1] = value
    fields[#fields + 1] = 'e'
    fields[#fields + 1] = expire
  end
  redis.call('XADD', log_key, 'MAXLEN', '~', history, rev .. '-0', unpack(fields))
  return rev
end

-- The earliest score of the namespace's expiry set, or nil when it is empty.
local function earliest(expiry_key)
  local first = redis.call('ZRANGE', expiry_key, 0, 0, 'WITHSCORES')
  if #first == 0 then return nil end
  return tonumber(first[2])
end

-- Ends a member whose TTL has run out (its entry may already be gone from Redis): deletes
-- what is left and emits its EXPIRE once (the member's removal makes it once). Returns true
-- if the member was due (score <= now) or its entry is gone while it is still listed.
local function expire_due(expiry_key, rev_key, log_key, history, entry, key_index, exp_index,
                          owner, key, now)
  local member = owner .. '/' .. key
  local score = redis.call('ZSCORE', expiry_key, member)
  if not score then return false end
  if tonumber(score) > now and redis.call('EXISTS', entry) == 1 then return false end
  redis.call('DEL', entry)
  redis.call('ZREM', expiry_key, member)
  redis.call('ZREM', key_index, key)
  redis.call('ZREM', exp_index, key)
  emit(rev_key, log_key, history, 'E', owner, key, now, '', nil, nil)
  return true
end
