-- One page of the namespace's live sessions in id order (MemoryStore.list_sessions).
-- KEYS[1] session index, KEYS[2] session expiry index
-- ARGV[1] session key prefix ('ac:{ns}:sessions:'), ARGV[2] page token (last id of the previous
-- page, exclusive; '' to start), ARGV[3] page size
-- Per-session keys are built here from ARGV[1]; they share KEYS' {namespace} hash tag.
-- Expired sessions are removed from the indexes on the way; at most 2000 ids are examined.
-- Returns {next token or '', {{id, purpose, metadata, created by, create ms, expire ms,
-- {participants}}, ...}}.
local lo = ARGV[2] ~= '' and ('(' .. ARGV[2]) or '-'
local limit = tonumber(ARGV[3])
local out, scanned, last = {}, 0, ''
while true do
  local batch = redis.call('ZRANGEBYLEX', KEYS[1], lo, '+', 'LIMIT', 0, limit - #out)
  if #batch == 0 then return {'', out} end
  for _, id in ipairs(batch) do
    local info = redis.call('HMGET', ARGV[1] .. id .. ':info', 'p', 'm', 'b', 'c', 'e')
    if info[1] then
      local members = redis.call('SMEMBERS', ARGV[1] .. id .. ':participants')
      out[#out + 1] = {id, info[1], info[2], info[3], info[4], info[5], members}
    else
      redis.call('ZREM', KEYS[1], id)
      redis.call('ZREM', KEYS[2], id)
    end
    last = id
  end
  scanned = scanned + #batch
  lo = '(' .. last
  if #out >= limit or scanned >= 2000 then
    if #redis.call('ZRANGEBYLEX', KEYS[1], lo, '+', 'LIMIT', 0, 1) == 0 then return {'', out} end
    return {last, out}
  end
end
