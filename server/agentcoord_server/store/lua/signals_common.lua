-- Shared by signals_send.lua and signals_receive.lua (prepended to each by load_script's
-- prelude): stream id comparison and the exact retention trim with its "trimmed up to"
-- marker. One definition, so sending and reading always agree on what was dropped.

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
