-- One page of an index (sorted set, all scores 0, ordered by member) of hashes, filtered.
-- Serves ListStagedPatterns, ListPatterns and ListConflicts.
-- KEYS[1] index
-- ARGV[1] item key prefix (the item's key is prefix .. the member's last ':' part, its id)
-- ARGV[2] resume after this member ('' from the start), ARGV[3] page size,
-- ARGV[4] examine at most this many members, ARGV[5] stop before the values returned exceed
-- this many bytes (at least one item is returned), ARGV[6..] filter triples (field, op, value):
--   op 'eq' string equality, 'ge' numeric >=, 'has' plain substring.
-- A member whose hash is gone (expired) or belongs to a newer entry (hash's idx differs) is
-- stale: it is never returned, and is removed here (lazy pruning).
-- Returns {next cursor ('' when nothing follows), hash1 as a flat array, hash2, …}.
local want = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local max_bytes = tonumber(ARGV[5])
local filters = {}
for i = 6, #ARGV, 3 do
  filters[#filters + 1] = {ARGV[i], ARGV[i + 1], ARGV[i + 2]}
end
-- Only the index field and the filtered fields are read before an entry is known to match,
-- so a selective filter does not copy every non-matching entry's payload.
local probe = {'idx'}
for _, f in ipairs(filters) do probe[#probe + 1] = f[1] end
local function matches(values)
  for i, f in ipairs(filters) do
    local v = values[i + 1]
    if not v then return false end
    if f[2] == 'eq' then
      if v ~= f[3] then return false end
    elseif f[2] == 'ge' then
      if tonumber(v) < tonumber(f[3]) then return false end
    elseif f[2] == 'has' then
      if not string.find(v, f[3], 1, true) then return false end
    end
  end
  return true
end
local out = {''}
local stale = {}
local min = ARGV[2] == '' and '-' or ('(' .. ARGV[2])
local last = nil
local prev = nil
local count = 0
local used = 0
local full = false
while budget > 0 and count < want and not full do
  local members = redis.call('ZRANGEBYLEX', KEYS[1], min, '+', 'LIMIT', 0,
    math.min(budget, want - count + 16))
  if #members == 0 then
    last = nil
    break
  end
  for _, m in ipairs(members) do
    budget = budget - 1
    last = m
    local key = ARGV[1] .. string.match(m, '[^:]+$')
    local values = redis.call('HMGET', key, unpack(probe))
    if values[1] ~= m then
      stale[#stale + 1] = m
    elseif matches(values) then
      local flat = redis.call('HGETALL', key)
      local size = 0
      for j = 2, #flat, 2 do size = size + #flat[j] end
      if count > 0 and used + size > max_bytes then
        -- The page is full by size: the next one starts at this member.
        last = prev
        full = true
        break
      end
      used = used + size
      out[#out + 1] = flat
      count = count + 1
      if count >= want then break end
    end
    prev = m
  end
  min = '(' .. last
end
if #stale > 0 then
  redis.call('ZREM', KEYS[1], unpack(stale))
end
if last and #redis.call('ZRANGEBYLEX', KEYS[1], '(' .. last, '+', 'LIMIT', 0, 1) > 0 then
  out[1] = last
end
return out
