-- One page of an agent's collaboration states in session id order (MemoryStore.list_collaboration_states).
-- KEYS[1] the owner's state index; ARGV[1] the owner's state key prefix, ARGV[2] page token (last
-- session id of the previous page, exclusive; '' to start), ARGV[3] page size.
-- Returns {next token or '', {{session id, state bytes, version, update ms}, ...}}.
local lo = ARGV[2] ~= '' and ('(' .. ARGV[2]) or '-'
local limit = tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYLEX', KEYS[1], lo, '+', 'LIMIT', 0, limit + 1)
local out = {}
for i = 1, math.min(#ids, limit) do
  local state = redis.call('HMGET', ARGV[1] .. ids[i], 's', 'v', 'u')
  if state[1] then out[#out + 1] = {ids[i], state[1], state[2], state[3]} end
end
if #ids > limit then return {ids[limit], out} end
return {'', out}
