-- RenewTaskLease. KEYS: see tasks_common.lua. ARGV: wake channel, task_id, fencing token,
-- agent, lease ms, task TTL ms.
-- Returns {'ok', token, expiry ms} | {'not_found'} | {'lease_lost', why}.
local id, token, agent = ARGV[2], ARGV[3], ARGV[4]
local lease_ms, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
local t = load(id, now)
local refused = check_lease(t, token, agent, now)
if refused then
  return refused
end
local expiry = now + lease_ms
t.lease_exp = expiry
redis.call('ZADD', K_L, expiry, id)  -- already counted in 'l': only its expiry moves
extend_ttl(K_L, ttl + lease_ms)
set_task_ttl(t, ttl + lease_ms, now)
save(t)
return {'ok', token, expiry}
