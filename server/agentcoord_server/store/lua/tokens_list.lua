-- Lists token records of one namespace in token id order (ids sort in issue order).
-- KEYS[1]  the namespace's token index (sorted set, all scores 0, members token ids)
-- ARGV[1]  the namespace's token record key prefix, "ac:{ns}:tokens:"
-- ARGV[2]  ZRANGEBYLEX start: "-" for the first page, "(<last id>" after it
-- ARGV[3]  how many records to return at most (page size + 1, to know if there is more)
-- Returns  { {token_id, field, value, field, value, ...}, ... }
-- Index members whose record has expired (a token's own lifetime) are removed on the way,
-- so the index never grows with dead tokens.
local limit = tonumber(ARGV[3])
local start = ARGV[2]
local out = {}
while #out < limit do
  local ids = redis.call('ZRANGEBYLEX', KEYS[1], start, '+', 'LIMIT', 0, limit - #out)
  if #ids == 0 then
    break
  end
  for _, id in ipairs(ids) do
    local fields = redis.call('HGETALL', ARGV[1] .. id)
    if #fields == 0 then
      redis.call('ZREM', KEYS[1], id)
    else
      table.insert(fields, 1, id)
      table.insert(out, fields)
    end
  end
  start = '(' .. ids[#ids]
end
return out
