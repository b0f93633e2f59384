-- ClaimTask. KEYS: see tasks_common.lua (KEYS[24]: the caller's registration). ARGV: wake
-- channel, agent, lease ms, task TTL ms, agent TTL ms, task types… (none: the agent's
-- registered capabilities).
-- Returns {'ok', task} | {'empty', due ms (-1: nothing due)} | {'no_types'}; see claim().
local agent = ARGV[2]
local lease_ms, ttl, agent_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local types = claim_types({unpack(ARGV, 6)})
if not types then
  return {'no_types'}
end
return claim(agent, types, lease_ms, ttl, agent_ttl, now_ms())
