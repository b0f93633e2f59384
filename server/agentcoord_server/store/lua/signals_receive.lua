-- ReceiveSignals (and a subscription's catch-up): the signals after a cursor that one agent
-- may see, oldest first, in one round trip.
--
-- First drops entries older than the retention (as signals_send does), so an idle namespace
-- never serves expired signals; then refuses a cursor older than the newest dropped id:
-- something after it is gone, and a silent gap is never acceptable.
--
-- KEYS[1] the stream, KEYS[2] the "trimmed up to" marker.
-- ARGV[1] retention in ms, ARGV[2] the reading agent, ARGV[3] cursor ('' = oldest retained),
-- ARGV[4] the most signals to return, ARGV[5] the most entries to scan,
-- ARGV[6..] the signal types wanted (none: every type).
-- Returns {'OK', next_cursor, more (0/1), {{id, {field, value, …}}, …}} or
-- {'CURSOR_TRIMMED', marker}.
redis.replicate_commands()

trim(KEYS[1], KEYS[2], tonumber(ARGV[1]))

local after = ARGV[3]
if after ~= '' then
  local marker = redis.call('GET', KEYS[2])
  if marker and older(after, marker) then
    return {'CURSOR_TRIMMED', marker}
  end
end

local agent = ARGV[2]
local needle = ',' .. agent .. ','
local limit = tonumber(ARGV[4])
local bound = tonumber(ARGV[5])
local types = nil
if #ARGV > 5 then
  types = {}
  for i = 6, #ARGV do
    types[ARGV[i]] = true
  end
end

local out = {}
local cursor = after
local scanned = 0
local more = 0
local start = '-'
if after ~= '' then
  start = '(' .. after
end
local batch = 256

while true do
  local n = math.min(batch, bound - scanned)
  if n <= 0 then
    more = 1
    break
  end
  local entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', n)
  local full = false
  for i, entry in ipairs(entries) do
    scanned = scanned + 1
    cursor = entry[1]
    local f = entry[2]
    local h = {}
    for j = 1, #f, 2 do
      h[f[j]] = f[j + 1]
    end
    local wanted = types == nil or types[h.t]
    local visible = h.s == agent or h.a == agent or (h.a == nil and h.n == nil)
      or (h.r ~= nil and string.find(h.r, needle, 1, true) ~= nil)
    if wanted and visible then
      out[#out + 1] = entry
      if #out >= limit then
        full = true
        if i < #entries or #entries == n then
          more = 1
        end
        break
      end
    end
  end
  if full or #entries < n then
    break
  end
  start = '(' .. cursor
end

return {'OK', cursor, more, out}
