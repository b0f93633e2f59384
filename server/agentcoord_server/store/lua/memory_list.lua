-- One page of an owner's live entries in key order (MemoryStore.list_entries).
-- KEYS[1] key index, KEYS[2] expiry index
-- ARGV[1] the owner's entry key prefix, ARGV[2] key prefix filter, ARGV[3] page token (the last
-- key of the previous page, exclusive; '' to start), ARGV[4] page size
-- Index members whose entry has expired are removed on the way (lazy pruning). At most 2000
-- members are examined per call, so a page can be short; the token then says where to go on.
-- Returns {next token or '', {{key, stash ms, expire ms, value size in bytes}, ...}}.
local lo = ARGV[3] ~= '' and ('(' .. ARGV[3]) or ('[' .. ARGV[2])
local hi = '[' .. ARGV[2] .. '\255'
local limit = tonumber(ARGV[4])
local out, scanned, last = {}, 0, ''
while true do
  local batch = redis.call('ZRANGEBYLEX', KEYS[1], lo, hi, 'LIMIT', 0, limit - #out)
  if #batch == 0 then return {'', out} end
  for _, key in ipairs(batch) do
    local entry = ARGV[1] .. key
    local meta = redis.call('HMGET', entry, 't', 'e')
    if meta[1] then
      out[#out + 1] = {key, meta[1], meta[2], redis.call('HSTRLEN', entry, 'v')}
    else
      redis.call('ZREM', KEYS[1], key)
      redis.call('ZREM', KEYS[2], key)
    end
    last = key
  end
  scanned = scanned + #batch
  lo = '(' .. last
  if #out >= limit or scanned >= 2000 then
    if #redis.call('ZRANGEBYLEX', KEYS[1], lo, hi, 'LIMIT', 0, 1) == 0 then return {'', out} end
    return {last, out}
  end
end
