-- ResolveConflict: open → resolved, atomically; the conflict keeps its remaining TTL.
-- KEYS[1] conflict hash, KEYS[2] open conflicts (sorted set of ids); ARGV[1] validator,
-- ARGV[2] resolution, ARGV[3] conflict id
-- Returns {'OK', conflict hash as a flat array}, {'NOT_FOUND'} or
-- {'ALREADY_RESOLVED', resolved_by}; nothing is written then.
local f = redis.call('HMGET', KEYS[1], 'state', 'resolved_by')
if not f[1] then
  return {'NOT_FOUND'}
end
if f[1] ~= 'open' then
  return {'ALREADY_RESOLVED', f[2]}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'state', 'resolved', 'resolution', ARGV[2], 'resolved_by', ARGV[1],
  'resolve_ms', now)
redis.call('ZREM', KEYS[2], ARGV[3])
return {'OK', redis.call('HGETALL', KEYS[1])}
