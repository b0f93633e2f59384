-- SendSignal: appends one signal to the namespace's stream, then drops every entry older
-- than the retention (exact MINID) and remembers the newest id it dropped, so a reader can
-- tell a trimmed cursor (OUT_OF_RANGE) from one that simply has nothing after it.
--
-- KEYS[1] the stream, KEYS[2] the "trimmed up to" marker (a string: the largest dropped id),
-- KEYS[3], KEYS[4] (session signals only) the session's info HASH and participants SET
-- (MemoryService's keys, store/memory.py).
-- ARGV[1] retention in ms, ARGV[2] signal type, ARGV[3] data as JSON ('' for none),
-- ARGV[4] sender, ARGV[5] target agent ('' for none), ARGV[6] session id ('' for none).
-- Returns {'OK', id} or {'SESSION_NOT_FOUND'} (no live session; nothing written).
--
-- Session signals store their recipients (",a,b,") on the entry: visibility is decided at
-- send time, so a later join or leave does not change who saw what, and reading never needs
-- a second key.
redis.replicate_commands()

local function parse(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end

local function older(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  return ams < bms or (ams == bms and aseq < bseq)
end

-- Drops entries older than the retention and records the newest dropped id in the marker.
-- Forward scans only: XREVRANGE from an id older than every entry walks the whole stream
-- backwards on Redis 6.2, which made every send O(stream length).
local function trim(stream, marker, retention_ms)
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local minid = string.format('%.0f', now_ms - retention_ms) .. '-0'
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #first == 0 or not older(first[1][1], minid) then
    return
  end
  -- O(entries dropped), as the XTRIM itself is.
  local last = first[1][1]
  while true do
    local batch = redis.call('XRANGE', stream, '(' .. last, '(' .. minid, 'COUNT', 1000)
    if #batch == 0 then
      break
    end
    last = batch[#batch][1]
    if #batch < 1000 then
      break
    end
  end
  redis.call('XTRIM', stream, 'MINID', minid)
  redis.call('SET', marker, last)
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
  if redis.call('EXISTS', KEYS[3]) == 0 then
    return {'SESSION_NOT_FOUND'}
  end
  local members = redis.call('SMEMBERS', KEYS[4])
  fields[#fields + 1] = 'n'
  fields[#fields + 1] = ARGV[6]
  fields[#fields + 1] = 'r'
  fields[#fields + 1] = ',' .. table.concat(members, ',') .. ','
end

local id = redis.call('XADD', KEYS[1], '*', unpack(fields))

trim(KEYS[1], KEYS[2], tonumber(ARGV[1]))

return {'OK', id}
