-- ClaimTask. ARGV: prefix, agent, lease ms, task TTL ms, agent TTL ms, task types… (none: the
-- agent's registered capabilities).
-- Returns {'ok', task} | {'empty', due ms (-1: nothing due)} | {'no_types'}; see claim().
local P, agent = ARGV[1], ARGV[2]
local lease_ms, ttl, agent_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local types = claim_types(P, agent, {unpack(ARGV, 6)})
if not types then
  return {'no_types'}
end
return claim(P, agent, types, lease_ms, ttl, agent_ttl, now_ms())
