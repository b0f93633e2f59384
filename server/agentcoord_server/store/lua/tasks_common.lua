-- Shared helpers of every tasks_*.lua script: store/tasks.py prepends this file to each one.
--
-- Keys (P = 'ac:{ns}:', built from ARGV[1]; ids were validated before they got here, so they
-- hold no ':'; every key shares the {ns} hash tag, so one script touches one cluster slot):
--   P..'tasks:t:'..id            hash: one task
--   P..'tasks:q:'..type          zset: pending task ids by (10 - priority) band + add sequence
--   P..'tasks:l:'..type          zset: claimed task ids by lease expiry (ms)
--   P..'tasks:d:'..type          zset: task ids in backoff, by when they become claimable (ms)
--   P..'tasks:dead'              zset: dead-lettered task ids by when they died (ms)
--   P..'tasks:index'             zset: every task id by add sequence (ListTasks)
--   P..'tasks:types'             zset: task types by their latest add (ms; GetServerStats)
--   P..'tasks:seq', 'tasks:fence' counters (no TTL: fencing tokens never repeat)
--   P..'tasks:req:'..agent..':'..request_id   string: AddTask idempotency → task id
--   P..'tasks:stats*', 'tasks:recent*'         completion counts and recent summaries
--   P..'tasks:lease_expiries'    counter: leases that ran out (metrics)
--   P..'agents:a:'..agent, P..'agents:index'  registrations
-- Times are Redis server time in ms, never a client's clock.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Sets a TTL of `ms` on `key` unless it already lives longer (PEXPIRE GT needs Redis 7).
local function extend_ttl(key, ms)
  local cur = redis.call('PTTL', key)
  if cur == -1 or (cur >= 0 and cur < ms) then
    redis.call('PEXPIRE', key, ms)
  end
end

-- The task hash lives `ms` from now; 'exp' mirrors it for Task.expire_time. The ListTasks
-- index lives at least as long, so a task that is still there is still listed.
local function set_task_ttl(P, tkey, ms, now)
  redis.call('HSET', tkey, 'exp', now + ms)
  redis.call('PEXPIRE', tkey, ms)
  extend_ttl(P .. 'tasks:index', ms)
end

-- A claim ended without success (FailTask or an expired lease): back to pending (keeping its
-- place in line, after `backoff` ms if > 0) or, when not retryable or out of attempts, dead.
local function settle_failure(P, id, now, ttl, err, retryable, backoff)
  local tkey = P .. 'tasks:t:' .. id
  local f = redis.call('HMGET', tkey, 'attempts', 'max', 'score', 'type')
  local attempts, max_attempts, score, ttype = tonumber(f[1]), tonumber(f[2]), f[3], f[4]
  redis.call('ZREM', P .. 'tasks:l:' .. ttype, id)
  if (not retryable) or attempts >= max_attempts then
    redis.call('HSET', tkey, 'status', 'dead', 'err', err, 'updated', now, 'avail', '')
    local dead = P .. 'tasks:dead'
    redis.call('ZADD', dead, now, id)
    extend_ttl(dead, ttl)
    set_task_ttl(P, tkey, ttl, now)
  elseif backoff > 0 then
    redis.call('HSET', tkey, 'status', 'pending', 'err', err, 'updated', now, 'avail', now + backoff)
    local delayed = P .. 'tasks:d:' .. ttype
    redis.call('ZADD', delayed, now + backoff, id)
    extend_ttl(delayed, ttl + backoff)
    set_task_ttl(P, tkey, ttl + backoff, now)
  else
    redis.call('HSET', tkey, 'status', 'pending', 'err', err, 'updated', now, 'avail', '')
    local queue = P .. 'tasks:q:' .. ttype
    redis.call('ZADD', queue, score, id)
    extend_ttl(queue, ttl)
    set_task_ttl(P, tkey, ttl, now)
  end
end

-- Settles task `id` if it is claimed under a lease that has run out (FailTask's rule, error
-- 'lease expired'). Claims, GetTask and ListTasks all call it, so what a read reports is what
-- the next claim would find, and no background job has to have run. Returns true when the
-- task was settled back to pending (a waiting claim may want it).
local function settle_if_expired(P, id, now, ttl)
  local f = redis.call('HMGET', P .. 'tasks:t:' .. id, 'status', 'lease_exp')
  if f[1] == 'claimed' and tonumber(f[2]) <= now then
    settle_failure(P, id, now, ttl, 'lease expired', true, 0)
    -- Counted for the agentcoord_task_lease_expiries metric.
    local expiries = P .. 'tasks:lease_expiries'
    redis.call('INCR', expiries)
    extend_ttl(expiries, ttl)
    return redis.call('HGET', P .. 'tasks:t:' .. id, 'status') == 'pending'
  end
  return false
end

-- Checks that `agent` holds the live lease `token` on task `id`. Returns nil when it does,
-- else the refusal to return from the script.
local function check_lease(tkey, token, agent, now)
  local f = redis.call('HMGET', tkey, 'status', 'token', 'assignee', 'lease_exp')
  if not f[1] then
    return {'not_found'}
  end
  if f[1] ~= 'claimed' or f[2] ~= token or f[3] ~= agent then
    return {'lease_lost', f[1]}
  end
  if tonumber(f[4]) <= now then
    return {'lease_lost', 'expired'}
  end
  return nil
end
