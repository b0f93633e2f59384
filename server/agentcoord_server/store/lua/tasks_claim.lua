-- ClaimTask. ARGV: prefix, agent, lease ms, task TTL ms, agent TTL ms, task types… (none: the
-- agent's registered capabilities).
-- Returns {'ok', task} | {'empty'} | {'no_types'}.
--
-- Before choosing, it reclaims the expired leases and due backoffs of the types it looks at,
-- so a dead worker's task is claimable again by the first claim after its lease expires —
-- no background job is needed. The choice and the lease are one atomic step: one claimant.
local P, agent = ARGV[1], ARGV[2]
local lease_ms, ttl, agent_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local types = {}
for i = 6, #ARGV do
  types[#types + 1] = ARGV[i]
end
local now = now_ms()

local akey = P .. 'agents:a:' .. agent
if #types == 0 then
  local caps = redis.call('HGET', akey, 'caps')
  if caps then
    for t in string.gmatch(caps, '[^,]+') do
      types[#types + 1] = t
    end
  end
  if #types == 0 then
    return {'no_types'}
  end
end
-- A claim is a sign of life, like a heartbeat.
if redis.call('EXISTS', akey) == 1 then
  redis.call('HSET', akey, 'seen', now)
  redis.call('PEXPIRE', akey, agent_ttl)
  local index = P .. 'agents:index'
  redis.call('ZADD', index, 0, agent)
  extend_ttl(index, agent_ttl)
end

local BATCH = 100
for _, t in ipairs(types) do
  local leases = P .. 'tasks:l:' .. t
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, BATCH)) do
    settle_if_expired(P, id, now, ttl)
    redis.call('ZREM', leases, id)  -- settled, or a stale entry (task gone or settled before)
  end
  local delayed = P .. 'tasks:d:' .. t
  local queue = P .. 'tasks:q:' .. t
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, BATCH)) do
    redis.call('ZREM', delayed, id)
    local f = redis.call('HMGET', P .. 'tasks:t:' .. id, 'status', 'score', 'type')
    if f[1] == 'pending' and f[3] == t then
      redis.call('ZADD', queue, f[2], id)
      extend_ttl(queue, ttl)
    end
  end
end

-- Queue members whose task hash expired (TASK TTL), or whose id has since been added again
-- as a task of another type, are dropped as they surface.
for _ = 1, BATCH do
  local best_id, best_score, best_queue, best_type = nil, nil, nil, nil
  for _, t in ipairs(types) do
    local queue = P .. 'tasks:q:' .. t
    local top = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
    if top[1] and (best_score == nil or tonumber(top[2]) < best_score) then
      best_id, best_score, best_queue, best_type = top[1], tonumber(top[2]), queue, t
    end
  end
  if best_id == nil then
    return {'empty'}
  end
  redis.call('ZREM', best_queue, best_id)
  local tkey = P .. 'tasks:t:' .. best_id
  local f = redis.call('HMGET', tkey, 'status', 'type')
  if f[1] == 'pending' and f[2] == best_type then
    local token = redis.call('INCR', P .. 'tasks:fence')
    local expiry = now + lease_ms
    redis.call('HINCRBY', tkey, 'attempts', 1)
    redis.call('HSET', tkey, 'status', 'claimed', 'assignee', agent, 'token', token,
      'lease_exp', expiry, 'updated', now, 'avail', '')
    local leases = P .. 'tasks:l:' .. f[2]
    redis.call('ZADD', leases, expiry, best_id)
    extend_ttl(leases, ttl + lease_ms)
    set_task_ttl(P, tkey, ttl + lease_ms, now)
    return {'ok', redis.call('HGETALL', tkey)}
  end
end
return {'empty'}
