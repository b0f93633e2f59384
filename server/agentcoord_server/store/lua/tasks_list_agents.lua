-- ListAgents. ARGV: prefix, cursor (last agent id of the previous page, '' for the start),
-- page size. Returns {next cursor ('' when done), {registration, …}}.
-- The index is lex-ordered (all scores 0); ids whose registration lapsed are removed as met.
-- A page may be short (even empty) while the cursor is set: each call examines a bounded number.
local P, cursor, page_size = ARGV[1], ARGV[2], tonumber(ARGV[3])
local index = P .. 'agents:index'
local out = {}
local min = cursor == '' and '-' or '(' .. cursor
local last = nil
for _ = 1, 50 do
  local batch = redis.call('ZRANGEBYLEX', index, min, '+', 'LIMIT', 0, page_size + 1)
  if #batch == 0 then
    return {'', out}
  end
  for _, id in ipairs(batch) do
    local reg = redis.call('HGETALL', P .. 'agents:a:' .. id)
    if #reg == 0 then
      redis.call('ZREM', index, id)
    else
      if #out >= page_size then
        return {last, out}
      end
      out[#out + 1] = reg
      last = id
    end
  end
  min = '(' .. batch[#batch]
end
-- Out of batches (a long run of lapsed ids): continue after the last id examined, so the
-- caller pages on instead of taking a short page for the end of the list.
return {string.sub(min, 2), out}
