-- SendSignal: appends one signal to the namespace's stream, then drops every entry older
-- than the retention (exact MINID) and remembers the newest id it dropped, so a reader can
-- tell a trimmed cursor (OUT_OF_RANGE) from one that simply has nothing after it.
--
-- KEYS[1] the stream, KEYS[2] the "trimmed up to" marker (a string: the largest dropped id),
-- KEYS[3] the namespace's registry record (its "quota:signals_per_second" field), KEYS[4] the
-- namespace's signal token bucket (a HASH: tokens left, when last refilled in ms),
-- KEYS[5], KEYS[6] (session signals only) the session's info HASH and participants SET
-- (MemoryService's keys, store/memory.py).
-- KEYS[#KEYS] (with a request id only) the idempotency key: a string holding the id of the
-- signal the sender's first send with that request id stored, for the retention.
-- ARGV[1] retention in ms, ARGV[2] signal type, ARGV[3] data as JSON ('' for none),
-- ARGV[4] sender, ARGV[5] target agent ('' for none), ARGV[6] session id ('' for none),
-- ARGV[7] '1' when a request id is given (then KEYS[#KEYS] is its key),
-- ARGV[8] the server's default signals-per-second quota (0: none; the record's field
-- overrides it).
-- Returns {'OK', id}, {'REPLAYED', id, fields of the stored entry (none if already trimmed)}
-- (nothing written), {'SESSION_NOT_FOUND'} (no live session; nothing written) or
-- {'QUOTA_EXCEEDED', limit, used} (the bucket is empty; nothing written).
--
-- The bucket holds up to `rate` signals and refills at `rate` per second (Redis's TIME, so
-- every server process shares one clock and one bucket); a replayed send takes nothing.
--
-- Session signals store their recipients (",a,b,") on the entry: visibility is decided at
-- send time, so a later join or leave does not change who saw what, and reading never needs
-- a second key.
redis.replicate_commands()

local request_key = nil
if ARGV[7] == '1' then
  request_key = KEYS[#KEYS]
  local earlier = redis.call('GET', request_key)
  if earlier then
    local found = redis.call('XRANGE', KEYS[1], earlier, earlier)
    if #found > 0 then
      return {'REPLAYED', earlier, found[1][2]}
    end
    return {'REPLAYED', earlier, {}}
  end
end

local fields = {'t', ARGV[2], 's', ARGV[4]}
if ARGV[3] ~= '' then
  fields[#fields + 1] = 'd'
  fields[#fields + 1] = ARGV[3]
end
if ARGV[5] ~= '' then
  fields[#fields + 1] = 'a'
  fields[#fields + 1] = ARGV[5]
end
if ARGV[6] ~= '' then
  if redis.call('EXISTS', KEYS[5]) == 0 then
    return {'SESSION_NOT_FOUND'}
  end
  local members = redis.call('SMEMBERS', KEYS[6])
  fields[#fields + 1] = 'n'
  fields[#fields + 1] = ARGV[6]
  fields[#fields + 1] = 'r'
  fields[#fields + 1] = ',' .. table.concat(members, ',') .. ','
end

local rate = tonumber(redis.call('HGET', KEYS[3], 'quota:signals_per_second') or '0')
if rate == 0 then
  rate = tonumber(ARGV[8])
end
local bucket, now = nil, nil
if rate > 0 then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  local state = redis.call('HMGET', KEYS[4], 'tokens', 'ms')
  bucket = tonumber(state[1]) or rate
  local last = tonumber(state[2]) or now
  bucket = math.min(rate, bucket + math.max(0, now - last) * rate / 1000)
  if bucket < 1 then
    return {'QUOTA_EXCEEDED', rate, rate - math.floor(bucket)}
  end
end

local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
if bucket then
  redis.call('HSET', KEYS[4], 'tokens', tostring(bucket - 1), 'ms', now)
  -- An idle bucket is full again after a second: no need to keep it longer than that.
  redis.call('PEXPIRE', KEYS[4], 2000)
end
if request_key then
  redis.call('SET', request_key, id, 'PX', tonumber(ARGV[1]))
end

trim(KEYS[1], KEYS[2], tonumber(ARGV[1]))

return {'OK', id}
