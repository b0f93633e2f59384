-- Stashes N entries of one owner at once, indexes them and emits a PUT event per entry
-- (MemoryStore.stash; memory_events.lua is prepended).
-- KEYS[1] the owner's key index (zset, all scores 0, ordered by key: listing)
-- KEYS[2] the owner's expiry index (zset, score = expire time ms: pruning)
-- KEYS[3] the namespace's owner index (zset, member owner, score = its latest expire ms:
--         GetServerStats finds the owners to count through it)
-- KEYS[4] the namespace's expiry set, KEYS[5] its revision, KEYS[6] its event log
-- KEYS[6+i] entry i's hash {v = value bytes, t = stash ms, e = expire ms, r = revision,
--           l = ttl ms}
-- ARGV[1] now (ms since the epoch), ARGV[2] events the log keeps, ARGV[3] expected revision
-- ('' none, 0 create only, N update revision N; single entry only), ARGV[4] the owner; then
-- per entry i: ARGV[3i+2] key, ARGV[3i+3] value, ARGV[3i+4] ttl ms.
-- Returns {'OK', earliest, expire 1, revision 1, ...}: earliest is the namespace's new
-- earliest expiry when this stash moved it earlier (or the set was empty), else 0; or
-- {'EXISTS', revision}, {'MISSING'}, {'MISMATCH', revision} and writes nothing.
local now, history, expected, owner = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local n = #KEYS - 6

local function live(i)
  local key = ARGV[3 * i + 2]
  local score = redis.call('ZSCORE', KEYS[4], owner .. '/' .. key)
  if score and tonumber(score) <= now then return nil end
  local rev = redis.call('HGET', KEYS[6 + i], 'r')
  if rev then return tonumber(rev) end
  if redis.call('EXISTS', KEYS[6 + i]) == 1 then return 0 end
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

local before = earliest(KEYS[4])
local out = {'OK', 0}
local longest, soonest = 0, nil
for i = 1, n do
  local key, value, ttl = ARGV[3 * i + 2], ARGV[3 * i + 3], tonumber(ARGV[3 * i + 4])
  local expire = now + ttl
  -- A previous version whose TTL ran out but that the sweep has not reached yet ends first,
  -- so its EXPIRE is emitted once and before this PUT.
  expire_due(KEYS[4], KEYS[5], KEYS[6], history, KEYS[6 + i], KEYS[1], KEYS[2], owner, key, now)
  local rev = emit(KEYS[5], KEYS[6], history, 'P', owner, key, now, '', value, expire)
  -- The hash always has the same fields, so HSET overwrites a previous value completely.
  redis.call('HSET', KEYS[6 + i], 'v', value, 't', now, 'e', expire, 'r', rev, 'l', ttl)
  redis.call('PEXPIRE', KEYS[6 + i], ttl)
  redis.call('ZADD', KEYS[1], 0, key)
  redis.call('ZADD', KEYS[2], expire, key)
  redis.call('ZADD', KEYS[4], expire, owner .. '/' .. key)
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
