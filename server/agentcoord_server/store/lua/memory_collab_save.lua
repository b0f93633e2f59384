-- Saves an agent's collaboration state for a session, with an optional compare-and-set on its
-- version (MemoryStore.save_collaboration_state). No TTL: collaboration state is kept (DESIGN.md, "Redis").
-- KEYS[1] state hash {s = serialized CollaborationState, v = version, u = update ms}
-- KEYS[2] the owner's state index (zset, scores 0, ordered by session id)
-- ARGV[1] session id, ARGV[2] state bytes, ARGV[3] expected version ('' = unconditional),
-- ARGV[4] now ms
-- Returns {1, new version} or, on a version mismatch and without writing, {0, stored version}.
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= current then return {0, current} end
local version = current + 1
redis.call('HSET', KEYS[1], 's', ARGV[2], 'v', version, 'u', ARGV[4])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return {1, version}
