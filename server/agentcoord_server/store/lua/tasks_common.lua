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
--   P..'tasks:deps'              hash: task id → ",dependent,ids," of the tasks waiting for it
--                                to settle (one hash per namespace, not a key per task)
--   P..'agents:a:'..agent, P..'agents:index'  registrations
-- Pub/sub channel (not a key: it names no data, so it needs no place in KEYS):
--   P..'tasks:wake'              one message per task that became pending (or due after a
--                                backoff), its task type: wakes one claim waiting in each
--                                server process subscribed to it (store/task_wakeups.py)
-- Times are Redis server time in ms, never a client's clock.
--
-- Task hash fields for tasks in time (tasks-time): 'nb' not_before (ms), 'why' the wait reason
-- of a pending task ('scheduled', 'backoff', 'deps' or ''), 'deps' the dependency ids
-- (comma-joined), 'deps_left' how many have not completed, 'on_fail' 'cancel'|'run' (what a
-- failed dependency does), 'bo_i'/'bo_m'/'bo_x' the backoff policy (initial ms, multiplier,
-- maximum ms).

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Tells the claims waiting in every server process that a task of `ttype` became pending.
local function wake(P, ttype)
  redis.call('PUBLISH', P .. 'tasks:wake', ttype)
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

-- Makes the pending task `id` claimable: into its type's queue (keeping its place in line),
-- or, while its not_before is ahead, into the delayed zset the claims promote from. Wakes a
-- waiting claim either way (one that finds it not yet due learns when it is and sleeps).
local function enqueue(P, id, now, ttl)
  local tkey = P .. 'tasks:t:' .. id
  local f = redis.call('HMGET', tkey, 'type', 'score', 'nb')
  local ttype, score, nb = f[1], f[2], tonumber(f[3] or '0') or 0
  if nb > now then
    redis.call('HSET', tkey, 'why', 'scheduled', 'avail', nb)
    local delayed = P .. 'tasks:d:' .. ttype
    redis.call('ZADD', delayed, nb, id)
    extend_ttl(delayed, ttl + nb - now)
    set_task_ttl(P, tkey, ttl + nb - now, now)
  else
    redis.call('HSET', tkey, 'why', '', 'avail', '')
    local queue = P .. 'tasks:q:' .. ttype
    redis.call('ZADD', queue, score, id)
    extend_ttl(queue, ttl)
  end
  wake(P, ttype)
end

-- Task `first` settled for good: completed (failed = false), or dead-lettered or cancelled
-- (failed = true). Its waiting dependents lose one outstanding dependency — the last one makes
-- them claimable — or, when it failed and they ask for it (on_fail 'cancel'), are cancelled,
-- which settles their own dependents in turn (a worklist, not recursion). Runs inside the
-- settling script, so a dependent is released in the same atomic step as its last dependency
-- completes: no claim can see it early, and no background job is needed.
local function release_dependents(P, first, failed, now, ttl)
  local deps = P .. 'tasks:deps'
  local work = {{first, failed}}
  local i = 1
  while i <= #work do
    local id, bad = work[i][1], work[i][2]
    i = i + 1
    local list = redis.call('HGET', deps, id)
    if list then
      redis.call('HDEL', deps, id)
      local how = redis.call('HGET', P .. 'tasks:t:' .. id, 'status')
      for dependent in string.gmatch(list, '[^,]+') do
        local dkey = P .. 'tasks:t:' .. dependent
        local f = redis.call('HMGET', dkey, 'status', 'why', 'deps_left', 'on_fail')
        if f[1] == 'pending' and f[2] == 'deps' then
          if bad and f[4] ~= 'run' then
            local what = how == 'dead' and 'dead-lettered' or 'cancelled'
            redis.call('HSET', dkey, 'status', 'cancelled', 'why', '', 'updated', now,
              'err', 'dependency ' .. id .. ' was ' .. what)
            set_task_ttl(P, dkey, ttl, now)
            work[#work + 1] = {dependent, true}
          else
            local left = tonumber(f[3]) - 1
            redis.call('HSET', dkey, 'deps_left', left)
            if left <= 0 then
              redis.call('HSET', dkey, 'updated', now)
              set_task_ttl(P, dkey, ttl, now)
              enqueue(P, dependent, now, ttl)
            end
          end
        end
      end
    end
  end
end

-- The delay before retry number `attempts` + 1 under the task's backoff policy (ms; 0 when
-- it has none): min(maximum, initial * multiplier^(attempts - 1)).
local function policy_delay(tkey, attempts)
  local f = redis.call('HMGET', tkey, 'bo_i', 'bo_m', 'bo_x')
  if not f[1] then
    return 0
  end
  local delay = tonumber(f[1]) * tonumber(f[2]) ^ math.max(0, attempts - 1)
  return math.floor(math.min(tonumber(f[3]), delay))
end

-- A claim ended without success (FailTask or an expired lease): back to pending (keeping its
-- place in line, after `backoff` ms if > 0; backoff < 0 means "none given": the task's backoff
-- policy decides) or, when not retryable or out of attempts, dead (settling its dependents).
local function settle_failure(P, id, now, ttl, err, retryable, backoff)
  local tkey = P .. 'tasks:t:' .. id
  local f = redis.call('HMGET', tkey, 'attempts', 'max', 'score', 'type')
  local attempts, max_attempts, score, ttype = tonumber(f[1]), tonumber(f[2]), f[3], f[4]
  redis.call('ZREM', P .. 'tasks:l:' .. ttype, id)
  if backoff < 0 then
    backoff = policy_delay(tkey, attempts)
  end
  if (not retryable) or attempts >= max_attempts then
    redis.call('HSET', tkey, 'status', 'dead', 'err', err, 'updated', now, 'avail', '', 'why', '')
    local dead = P .. 'tasks:dead'
    redis.call('ZADD', dead, now, id)
    extend_ttl(dead, ttl)
    set_task_ttl(P, tkey, ttl, now)
    release_dependents(P, id, true, now, ttl)
  elseif backoff > 0 then
    redis.call('HSET', tkey, 'status', 'pending', 'err', err, 'updated', now, 'avail', now + backoff,
      'why', 'backoff')
    local delayed = P .. 'tasks:d:' .. ttype
    redis.call('ZADD', delayed, now + backoff, id)
    extend_ttl(delayed, ttl + backoff)
    set_task_ttl(P, tkey, ttl + backoff, now)
    wake(P, ttype)  -- a waiting claim learns when it is due and sleeps until then
  else
    redis.call('HSET', tkey, 'status', 'pending', 'err', err, 'updated', now, 'avail', '')
    local queue = P .. 'tasks:q:' .. ttype
    redis.call('ZADD', queue, score, id)
    extend_ttl(queue, ttl)
    set_task_ttl(P, tkey, ttl, now)
    wake(P, ttype)
  end
end

-- Settles task `id` if it is claimed under a lease that has run out (FailTask's rule, error
-- 'lease expired'). Claims, GetTask and ListTasks all call it, so what a read reports is what
-- the next claim would find, and no background job has to have run. Returns true when the
-- task was settled back to pending (a waiting claim may want it).
local function settle_if_expired(P, id, now, ttl)
  local f = redis.call('HMGET', P .. 'tasks:t:' .. id, 'status', 'lease_exp')
  if f[1] == 'claimed' and tonumber(f[2]) <= now then
    settle_failure(P, id, now, ttl, 'lease expired', true, -1)
    -- Counted for the agentcoord_task_lease_expiries metric.
    local expiries = P .. 'tasks:lease_expiries'
    redis.call('INCR', expiries)
    extend_ttl(expiries, ttl)
    return redis.call('HGET', P .. 'tasks:t:' .. id, 'status') == 'pending'
  end
  return false
end

-- Checks that `agent` holds the live lease `token` on task `id`. Returns nil when it does,
-- else the refusal to return from the script: {'cancelled'} when the task was cancelled
-- while `agent` held it under that token.
local function check_lease(tkey, token, agent, now)
  local f = redis.call('HMGET', tkey, 'status', 'token', 'assignee', 'lease_exp')
  if not f[1] then
    return {'not_found'}
  end
  if f[1] == 'cancelled' and f[2] == token and f[3] == agent then
    return {'cancelled'}
  end
  if f[1] ~= 'claimed' or f[2] ~= token or f[3] ~= agent then
    return {'lease_lost', f[1]}
  end
  if tonumber(f[4]) <= now then
    return {'lease_lost', 'expired'}
  end
  return nil
end

-- The types a claim looks at: `types` when given, else the agent's registered capabilities.
-- Returns nil when there are none.
local function claim_types(P, agent, types)
  if #types > 0 then
    return types
  end
  local caps = redis.call('HGET', P .. 'agents:a:' .. agent, 'caps')
  local found = {}
  if caps then
    for t in string.gmatch(caps, '[^,]+') do
      found[#found + 1] = t
    end
  end
  if #found == 0 then
    return nil
  end
  return found
end

-- ClaimTask's rule, shared with CompleteTask/FailTask's claim_next: leases the best pending
-- task of `types` to `agent` for `lease_ms`. Returns {'ok', task} or {'empty', due} where due
-- is the ms until the earliest lease of those types runs out or backoff ends (-1: none), so a
-- waiting claim can look again exactly then.
--
-- Before choosing, it reclaims the expired leases and due backoffs of the types it looks at,
-- so a dead worker's task is claimable again by the first claim after its lease expires —
-- no background job is needed. The choice and the lease are one atomic step: one claimant.
local function claim(P, agent, types, lease_ms, ttl, agent_ttl, now)
  local akey = P .. 'agents:a:' .. agent
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
      break
    end
    redis.call('ZREM', best_queue, best_id)
    local tkey = P .. 'tasks:t:' .. best_id
    local f = redis.call('HMGET', tkey, 'status', 'type')
    if f[1] == 'pending' and f[2] == best_type then
      local token = redis.call('INCR', P .. 'tasks:fence')
      local expiry = now + lease_ms
      redis.call('HINCRBY', tkey, 'attempts', 1)
      redis.call('HSET', tkey, 'status', 'claimed', 'assignee', agent, 'token', token,
        'lease_exp', expiry, 'updated', now, 'avail', '', 'why', '')
      local leases = P .. 'tasks:l:' .. f[2]
      redis.call('ZADD', leases, expiry, best_id)
      extend_ttl(leases, ttl + lease_ms)
      set_task_ttl(P, tkey, ttl + lease_ms, now)
      return {'ok', redis.call('HGETALL', tkey)}
    end
  end

  local due = -1
  for _, t in ipairs(types) do
    for _, key in ipairs({P .. 'tasks:l:' .. t, P .. 'tasks:d:' .. t}) do
      local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      if first[1] then
        local ms = math.max(0, tonumber(first[2]) - now)
        if due < 0 or ms < due then
          due = ms
        end
      end
    end
  end
  return {'empty', due}
end

-- The task `agent` claimed with the claim_next of the CompleteTask/FailTask that ended task
-- `tkey`, when that call is repeated: the same task while that lease is still the agent's.
local function claimed_next(P, tkey, agent)
  local f = redis.call('HMGET', tkey, 'next', 'next_token')
  if not f[1] then
    return nil
  end
  local nkey = P .. 'tasks:t:' .. f[1]
  local g = redis.call('HMGET', nkey, 'status', 'assignee', 'token')
  if g[1] == 'claimed' and g[2] == agent and g[3] == f[2] then
    return redis.call('HGETALL', nkey)
  end
  return nil
end

-- Runs the claim_next of CompleteTask/FailTask for the task `tkey` just ended and remembers
-- what it leased on that task (claimed_next), so a repeated call answers with the same task.
-- Returns the leased task, or false when none was pending.
local function claim_next(P, tkey, agent, types, lease_ms, ttl, agent_ttl, now)
  local reply = claim(P, agent, types, lease_ms, ttl, agent_ttl, now)
  if reply[1] ~= 'ok' then
    return false
  end
  local h = {}
  for i = 1, #reply[2], 2 do
    h[reply[2][i]] = reply[2][i + 1]
  end
  redis.call('HSET', tkey, 'next', h['id'], 'next_token', h['token'])
  return reply[2]
end
