-- Shared by the working-memory scripts that change entries (prepended by load_script's
-- prelude). Every change bumps the namespace's revision and appends its event to the
-- namespace's event log in the same script, so an event is never lost nor written without
-- its change, and revisions (the log's stream ids, '<revision>-0') never repeat. The same
-- scripts keep the namespace's usage (entries and bytes, for its quotas) exact.
--   log        ac:{ns}:memory-log      STREAM  k kind (P put, D delete, E expire), o owner,
--                                              y key, t ms, s session (context items),
--                                              v value bytes + e expire ms (P only)
--   revision   ac:{ns}:memory-rev      STRING  the last revision (no TTL: never reused)
--   expiry     ac:{ns}:memory-expiry   ZSET    member '<owner>/<key>', score expire ms: the
--                                              sweep emits EXPIRE for due members
--   sizes      ac:{ns}:memory-sizes    HASH    member '<owner>/<key>' → value bytes: the
--                                              namespace's entries (HLEN) for its quota
--   usage      ac:{ns}:memory-usage    STRING  the sum of sizes (bytes)
-- Each script sets NS (below) from its KEYS before calling these functions.

local NS = {}

local function emit(kind, owner, key, now, session, value, expire)
  local rev = redis.call('INCR', NS.rev)
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
  redis.call('XADD', NS.log, 'MAXLEN', '~', NS.history, rev .. '-0', unpack(fields))
  return rev
end

-- The earliest score of the namespace's expiry set, or nil when it is empty.
local function earliest()
  local first = redis.call('ZRANGE', NS.expiry, 0, 0, 'WITHSCORES')
  if #first == 0 then return nil end
  return tonumber(first[2])
end

-- Forgets an entry's size (it was deleted or expired).
local function uncount(member)
  local size = redis.call('HGET', NS.sizes, member)
  if size then
    redis.call('HDEL', NS.sizes, member)
    redis.call('DECRBY', NS.usage, size)
  end
end

-- Records an entry's new size (it was stashed).
local function count(member, size)
  local old = tonumber(redis.call('HGET', NS.sizes, member) or '0')
  redis.call('HSET', NS.sizes, member, size)
  redis.call('INCRBY', NS.usage, size - old)
end

-- Ends a member whose TTL has run out (its entry may already be gone from Redis): deletes
-- what is left and emits its EXPIRE once (the member's removal makes it once). Returns true
-- if the member was due (score <= now) or its entry is gone while it is still listed.
local function expire_due(entry, key_index, exp_index, owner, key, now)
  local member = owner .. '/' .. key
  local score = redis.call('ZSCORE', NS.expiry, member)
  if not score then return false end
  if tonumber(score) > now and redis.call('EXISTS', entry) == 1 then return false end
  redis.call('DEL', entry)
  redis.call('ZREM', NS.expiry, member)
  redis.call('ZREM', key_index, key)
  redis.call('ZREM', exp_index, key)
  uncount(member)
  emit('E', owner, key, now, '', nil, nil)
  return true
end

-- The namespace keys every entry-changing script passes, in this order, from KEYS[first].
local function namespace_keys(first, history)
  NS.expiry, NS.rev, NS.log = KEYS[first], KEYS[first + 1], KEYS[first + 2]
  NS.sizes, NS.usage = KEYS[first + 3], KEYS[first + 4]
  NS.history = history
end
