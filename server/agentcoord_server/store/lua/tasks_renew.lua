-- RenewTaskLease. ARGV: prefix, task_id, fencing token, agent, lease ms, task TTL ms.
-- Returns {'ok', token, expiry ms} | {'not_found'} | {'lease_lost', why}.
local P, id, token, agent = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local lease_ms, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
local tkey = P .. 'tasks:t:' .. id
local refused = check_lease(tkey, token, agent, now)
if refused then
  return refused
end
local expiry = now + lease_ms
local leases = P .. 'tasks:l:' .. redis.call('HGET', tkey, 'type')
redis.call('HSET', tkey, 'lease_exp', expiry)
redis.call('ZADD', leases, expiry, id)
extend_ttl(leases, ttl + lease_ms)
set_task_ttl(P, tkey, ttl + lease_ms, now)
return {'ok', token, expiry}
