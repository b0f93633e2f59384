-- Stashes N entries of one owner at once, indexes them and emits a PUT event per entry
-- (MemoryStore.stash; memory_events.lua is prepended).
-- KEYS[1] the owner's key index (zset, all scores 0, ordered by key: listing)
-- KEYS[2] the owner's expiry index (zset, score = expire time ms: pruning)
-- KEYS[3] the namespace's owner index (zset, member owner, score = its latest expire ms:
--         GetServerStats finds the owners to count through it)
-- KEYS[4] the namespace's record (hash: quota:memory_entries, quota:memory_bytes)
-- KEYS[5..9] the namespace keys of memory_events.lua (expiry, revision, log, sizes, usage)
-- KEYS[9+i] entry i's hash {v = value bytes, t = stash ms, e = expire ms, r = revision,
--           l = ttl ms}
-- ARGV[1] now (ms since the epoch), ARGV[2] events the log keeps, ARGV[3] expected revision
-- ('' none, 0 create only, N update revision N; single entry only), ARGV[4] the owner,
-- ARGV[5] / ARGV[6] the server's default entries / bytes quota (0: none; the record's fields
-- override them); then per entry i: ARGV[3i+4] key, ARGV[3i+5] value, ARGV[3i+6] ttl ms.
-- Returns {'OK', earliest, expire 1, revision 1, ...}: earliest is the namespace's new
-- earliest expiry when this stash moved it earlier (or the set was empty), else 0; or
-- {'EXISTS', revision}, {'MISSING'}, {'MISMATCH', revision}, {'QUOTA', name, limit, used}
-- and writes nothing.
local now, expected, owner = tonumber(ARGV[1]), ARGV[3], ARGV[4]
namespace_keys(5, ARGV[2])
local FIRST = 9
local n = #KEYS - FIRST

local function live(i)
  local key = ARGV[3 * i + 4]
  local score = redis.call('ZSCORE', NS.expiry, owner .. '/' .. key)
  if score and tonumber(score) <= now then return nil end
  local rev = redis.call('HGET', KEYS[FIRST + i], 'r')
  if rev then return tonumber(rev) end
  if redis.call('EXISTS', KEYS[FIRST + i]) == 1 then return 0 end
  return nil
end

if expected ~= '' then
  local current = live(1)
  local want = tonumber(expected)
  if want == 0 then
    if current then return {'EXISTS', current} end
  elseif not current then
    return {'MISSING'}
  elseif current ~= want then
    return {'MISMATCH', current}
  end
end

-- Quotas: an overwritten (or due) entry frees its own count and bytes.
local quota = redis.call('HMGET', KEYS[4], 'quota:memory_entries', 'quota:memory_bytes')
local max_entries = tonumber(quota[1] or '0')
if max_entries == 0 then max_entries = tonumber(ARGV[5]) end
local max_bytes = tonumber(quota[2] or '0')
if max_bytes == 0 then max_bytes = tonumber(ARGV[6]) end
if max_entries > 0 or max_bytes > 0 then
  local entries = redis.call('HLEN', NS.sizes)
  local bytes = tonumber(redis.call('GET', NS.usage) or '0')
  local more_entries, more_bytes = 0, 0
  for i = 1, n do
    local old = redis.call('HGET', NS.sizes, owner .. '/' .. ARGV[3 * i + 4])
    if old then
      more_bytes = more_bytes - tonumber(old)
    else
      more_entries = more_entries + 1
    end
    more_bytes = more_bytes + #ARGV[3 * i + 5]
  end
  if max_entries > 0 and more_entries > 0 and entries + more_entries > max_entries then
    return {'QUOTA', 'memory_entries', max_entries, entries}
  end
  if max_bytes > 0 and more_bytes > 0 and bytes + more_bytes > max_bytes then
    return {'QUOTA', 'memory_bytes', max_bytes, bytes}
  end
end

local before = earliest()
local out = {'OK', 0}
local longest, soonest = 0, nil
for i = 1, n do
  local key, value, ttl = ARGV[3 * i + 4], ARGV[3 * i + 5], tonumber(ARGV[3 * i + 6])
  local entry, member = KEYS[FIRST + i], owner .. '/' .. key
  local expire = now + ttl
  -- A previous version whose TTL ran out but that the sweep has not reached yet ends first,
  -- so its EXPIRE is emitted once and before this PUT.
  expire_due(entry, KEYS[1], KEYS[2], owner, key, now)
  local rev = emit('P', owner, key, now, '', value, expire)
  -- The hash always has the same fields, so HSET overwrites a previous value completely.
  redis.call('HSET', entry, 'v', value, 't', now, 'e', expire, 'r', rev, 'l', ttl)
  redis.call('PEXPIRE', entry, ttl)
  redis.call('ZADD', KEYS[1], 0, key)
  redis.call('ZADD', KEYS[2], expire, key)
  redis.call('ZADD', NS.expiry, expire, member)
  count(member, #value)
  if ttl > longest then longest = ttl end
  if not soonest or expire < soonest then soonest = expire end
  out[#out + 1] = expire
  out[#out + 1] = rev
end
if not before or soonest < before then out[2] = soonest end
-- Lazy, bounded pruning: every write drops up to 100 index members whose entries have expired,
-- so an owner's indexes stay close to its live entries without a background sweeper.
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
-- The owner index keeps each owner at its latest expiry (GT: never lowered) and drops owners
-- whose entries have all expired, so it holds about the owners with live entries.
redis.call('ZADD', KEYS[3], 'GT', now + longest, owner)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
-- The indexes live as long as the longest-lived entry they list, so an idle owner leaves nothing.
for j = 1, 3 do
  if redis.call('PTTL', KEYS[j]) < longest then redis.call('PEXPIRE', KEYS[j], longest) end
end
return out
