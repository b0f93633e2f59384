-- Examines some members of an index (sorted set, all scores 0, ordered by member) of hashes,
-- filtered: one step of ListStagedPatterns, ListPatterns and ListConflicts
-- (StagingStore._list_page reads the members and calls this per batch).
-- KEYS[1] index, KEYS[1 + i] the hash of member i (its id is the member's last ':' part).
-- ARGV[1] items still wanted, ARGV[2] bytes of values already in the page, ARGV[3] stop before
-- the page's values exceed this many bytes (a page holds at least one item), ARGV[4] items
-- already in the page, ARGV[5] F: how many filter triples follow, ARGV[6..5+3F] the filters
-- (field, op, value): op 'eq' string equality, 'ge' numeric >=, 'has' plain substring; then
-- the members, one per hash key.
-- A member whose hash is gone (expired) or belongs to a newer entry (hash's idx differs) is
-- stale: it is never returned, and is removed here (lazy pruning).
-- Returns {members examined (the page's cursor is the last of them), bytes used, full ('1'
-- when the next item would have overflowed the byte bound, else '0'), hash1 as a flat array,
-- hash2, …}.
local want = tonumber(ARGV[1])
local used = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local nfilters = tonumber(ARGV[5])
local filters = {}
for i = 6, 5 + 3 * nfilters, 3 do
  filters[#filters + 1] = {ARGV[i], ARGV[i + 1], ARGV[i + 2]}
end
local first = 6 + 3 * nfilters
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
local out = {0, 0, '0'}
local stale = {}
local examined = 0
local added = 0
for i = 2, #KEYS do
  local m = ARGV[first + i - 2]
  local values = redis.call('HMGET', KEYS[i], unpack(probe))
  if values[1] ~= m then
    stale[#stale + 1] = m
  elseif matches(values) then
    local flat = redis.call('HGETALL', KEYS[i])
    local size = 0
    for j = 2, #flat, 2 do size = size + #flat[j] end
    if count + added > 0 and used + size > max_bytes then
      -- The page is full by size: the next one starts at this member.
      out[3] = '1'
      break
    end
    used = used + size
    out[#out + 1] = flat
    added = added + 1
  end
  examined = examined + 1
  if added >= want then break end
end
if #stale > 0 then
  redis.call('ZREM', KEYS[1], unpack(stale))
end
out[1] = examined
out[2] = used
return out
