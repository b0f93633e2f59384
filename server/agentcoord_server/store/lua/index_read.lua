-- Reads the hashes behind some members of lexicographic indexes, dropping members whose hash
-- is gone (expired) from those indexes (paging.py: the examine step of a list).
-- KEYS[1..P] the indexes to drop stale members from (P = ARGV[1], may be 0), then one hash
-- key per member.
-- ARGV[1] P, ARGV[2] F: how many fields follow (0: every field, HGETALL), ARGV[3..2+F] the
-- fields, then the members (as many as hash keys).
-- Returns per member the HGETALL array or the HMGET values, or an empty array if the hash is
-- gone.
local p, f = tonumber(ARGV[1]), tonumber(ARGV[2])
local fields = {}
for i = 1, f do fields[i] = ARGV[2 + i] end
local out = {}
local first = 2 + f
for i = p + 1, #KEYS do
  local member = ARGV[first + i - p]
  local row
  if f == 0 then
    row = redis.call('HGETALL', KEYS[i])
  else
    row = redis.call('HMGET', KEYS[i], unpack(fields))
    if not row[1] then row = {} end
  end
  if #row == 0 then
    for j = 1, p do redis.call('ZREM', KEYS[j], member) end
  end
  out[#out + 1] = row
end
return out
