-- Shared helpers of every tasks_*.lua script: store/tasks.py prepends this file to each one.
--
-- Every key a script touches is declared in KEYS (Redis's rule for scripts; proxies and
-- servers that enforce it, and a cluster's slot routing, are only right with it): no key name
-- is built here from a prefix, an id or a type. So a claim, which pops an id it cannot know in
-- advance, and a completion, which touches the queues of a type its caller does not name,
-- find everything in keys of fixed names, one of each per namespace. Every script is called
-- with the same KEYS (TaskStore._keys; all in the namespace's {ns} hash tag, one slot):
--   KEYS[1]  tasks:rec        hash: task id → the task's record (cjson object of strings)
--   KEYS[2]  tasks:exp        zset: task id → when its record expires (ms); a record past it
--                             is absent to every read, and is deleted in bounded batches
--                             (prune) by AddTask and by a claim that finds it
--   KEYS[3]  tasks:q          zset: the pending queue of every type: score = type number * 16
--                             + (10 - priority), member = 13-digit add sequence ':' task id,
--                             so one type's best task is ZRANGEBYSCORE over its 16 scores,
--                             LIMIT 0 1 (highest priority, then oldest)
--   KEYS[4]  tasks:l          zset: claimed task ids by lease expiry (ms), every type
--   KEYS[5]  tasks:d          zset: task ids in backoff or scheduled, by when they become
--                             claimable (ms), every type
--   KEYS[6]  tasks:typeno     hash: task type → its small number (assigned at first use;
--                             ':n' holds the last one given); lives at least as long as
--                             tasks:q, so no queue score outlives its type's number
--   KEYS[7]  tasks:index      zset: every task id by add sequence (ListTasks)
--   KEYS[8]  tasks:dead       zset: dead-lettered task ids by when they died (ms)
--   KEYS[9]  tasks:deps       hash: task id → ",dependent,ids," of the tasks waiting for it
--   KEYS[10] tasks:seq, KEYS[11] tasks:fence   counters (no TTL: fencing tokens never repeat)
--   KEYS[12] tasks:lease_expiries              counter: leases that ran out (metrics)
--   KEYS[13] tasks:counts     hash: 'q:<type>', 'l:<type>', 'd:<type>' → how many of the
--                             type's tasks are queued, claimed, delayed (GetServerStats,
--                             metrics, quotas); kept with the record's 'at' by place/unplace
--   KEYS[14] tasks:types      zset: task types by their latest add (ms; GetServerStats)
--   KEYS[15] tasks:stats      hash: 'total' completions
--   KEYS[16] tasks:stats:agents       hash: agent → completions
--   KEYS[17] tasks:stats:types        hash: type → completions
--   KEYS[18] tasks:stats:type_agents  hash: '<type>:<agent>' → completions
--   KEYS[19] tasks:recent     list: the latest completion summaries (cjson), newest first
--   KEYS[20] tasks:recent_types       hash: a ring of RECENT_RESULTS summaries per type:
--                             '<type>:n' pushes so far, '<type>:<n mod size>' the n-th
--   KEYS[21] agents:index     zset: registered agent ids (all scores 0)
--   KEYS[22] agents:cx        hash: agent → comma-joined ids of tasks it held that were
--                             cancelled since its last heartbeat (CancelTask writes the holder's
--                             entry: a key of its own would be a name the caller cannot know)
--   KEYS[23] namespace        the namespace's registry record (its quota:pending_tasks field)
--   KEYS[24] agents:a:<caller>  the calling agent's registration (a claim by capabilities
--                             reads its 'caps'; every claim refreshes it)
--   KEYS[25] a script's own extra key: AddTask's idempotency string
--            tasks:req:<caller>:<request id>, CancelTask's signals stream; else unused
-- ARGV[1] of every script is the namespace's wake-up pub/sub channel, ac:{ns}:tasks:wake (not
-- a key: it names no data): one message per task that became pending (or due after a delay),
-- its task type, wakes one claim waiting in each server process subscribed (task_wakeups.py).
-- Ids and types were validated before they got here, so they hold no ':'.
-- Times are Redis server time in ms, never a client's clock.
--
-- Record fields (all strings): id, type, desc, pri, payload, status, attempts, max, by,
-- created, updated, seq, exp (expiry ms), at ('q'|'l'|'d' or absent: the zset it is in), and
-- as they apply: assignee, token, lease_exp, result, err, avail, completed, next/next_token
-- (claim_next's lease), nb not_before (ms), why the wait reason of a pending task
-- ('scheduled', 'backoff', 'deps' or ''), deps (comma-joined), deps_left, on_fail
-- 'cancel'|'run', bo_i/bo_m/bo_x the backoff policy (initial ms, multiplier, maximum ms).

local K_REC, K_EXP, K_Q, K_L, K_D, K_TYPENO = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local K_INDEX, K_DEAD, K_DEPS, K_SEQ, K_FENCE = KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local K_EXPIRIES, K_COUNTS, K_TYPES = KEYS[12], KEYS[13], KEYS[14]
local K_STATS, K_STATS_AGENTS, K_STATS_TYPES, K_STATS_TYPE_AGENTS = KEYS[15], KEYS[16], KEYS[17], KEYS[18]
local K_RECENT, K_RECENT_TYPES = KEYS[19], KEYS[20]
local K_AGENTS, K_CX, K_NAMESPACE, K_AGENT, K_EXTRA = KEYS[21], KEYS[22], KEYS[23], KEYS[24], KEYS[25]
local WAKE = ARGV[1]

local PRUNE_BATCH = 50

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Tells the claims waiting in every server process that a task of `ttype` became pending.
local function wake(ttype)
  redis.call('PUBLISH', WAKE, ttype)
end

-- Sets a TTL of `ms` on `key` unless it already lives longer (PEXPIRE GT needs Redis 7).
local function extend_ttl(key, ms)
  local cur = redis.call('PTTL', key)
  if cur == -1 or (cur >= 0 and cur < ms) then
    redis.call('PEXPIRE', key, ms)
  end
end

-- The record of `id` as stored, expired or not (nil when there is none).
local function load_raw(id)
  local raw = redis.call('HGET', K_REC, id)
  if not raw then
    return nil
  end
  return cjson.decode(raw)
end

-- The record of `id`, nil when there is none or it has expired (TASK TTL).
local function load(id, now)
  local t = load_raw(id)
  if t and tonumber(t.exp or '0') > now then
    return t
  end
  return nil
end

-- Every value is stored as a string, the way HSET stored the fields of the per-task hashes
-- this replaced: '%.17g' writes an integer ms or token in full, never in exponent form.
local function save(t)
  for k, v in pairs(t) do
    if type(v) == 'number' then
      t[k] = string.format('%.17g', v)
    end
  end
  redis.call('HSET', K_REC, t.id, cjson.encode(t))
end

-- The record as an HGETALL-style flat list, what the scripts return (TaskRecord.from_flat).
local function flat(t)
  local out = {}
  for k, v in pairs(t) do
    out[#out + 1] = k
    out[#out + 1] = tostring(v)
  end
  return out
end

local function queue_member(t)
  return string.format('%013d', tonumber(t.seq)) .. ':' .. t.id
end

-- The number of type `ttype` (nil when it has none and `create` is false).
local function type_number(ttype, create)
  local n = redis.call('HGET', K_TYPENO, ttype)
  if n or not create then
    return tonumber(n)
  end
  n = redis.call('HINCRBY', K_TYPENO, ':n', 1)
  redis.call('HSET', K_TYPENO, ttype, n)
  return n
end

-- Takes the task out of the queue, lease or delayed zset it is in ('at'), counting it out.
local function unplace(t)
  local at = t.at
  if not at then
    return
  end
  if at == 'q' then
    redis.call('ZREM', K_Q, queue_member(t))
  else
    redis.call('ZREM', at == 'l' and K_L or K_D, t.id)
  end
  redis.call('HINCRBY', K_COUNTS, at .. ':' .. t.type, -1)
  t.at = nil
end

-- Puts the task into the queue ('q', keeping its place in line), the lease zset ('l', score =
-- lease expiry) or the delayed zset ('d', score = when it is due), counting it in; `ms` is how
-- long that zset must live at least.
local function place(t, at, score, ms)
  unplace(t)
  if at == 'q' then
    local n = type_number(t.type, true)
    redis.call('ZADD', K_Q, n * 16 + 10 - tonumber(t.pri), queue_member(t))
    extend_ttl(K_Q, ms)
    extend_ttl(K_TYPENO, ms)
  else
    local key = at == 'l' and K_L or K_D
    redis.call('ZADD', key, score, t.id)
    extend_ttl(key, ms)
  end
  redis.call('HINCRBY', K_COUNTS, at .. ':' .. t.type, 1)
  t.at = at
end

-- The task record lives `ms` from now; 'exp' is also Task.expire_time. The record hash, the
-- expiry zset, the counts and the ListTasks index live at least as long, so a task that is
-- still there is still listed and counted.
local function set_task_ttl(t, ms, now)
  t.exp = now + ms
  redis.call('ZADD', K_EXP, t.exp, t.id)
  for _, key in ipairs({K_REC, K_EXP, K_COUNTS, K_INDEX}) do
    extend_ttl(key, ms)
  end
end

-- Deletes the record `t` (expired), out of its zset and counts.
local function drop(t)
  unplace(t)
  redis.call('HDEL', K_REC, t.id)
  redis.call('ZREM', K_EXP, t.id)
end

-- Deletes up to PRUNE_BATCH records whose TASK TTL has run out: the lazy rule that stands in
-- for the per-key TTL a record in a shared hash cannot have.
local function prune(now)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_EXP, '-inf', now, 'LIMIT', 0, PRUNE_BATCH)) do
    local t = load_raw(id)
    if t and tonumber(t.exp or '0') <= now then
      drop(t)
    else
      redis.call('ZREM', K_EXP, id)
    end
  end
end

-- Makes the pending task `t` claimable: into the queue (keeping its place in line), or,
-- while its not_before is ahead, into the delayed zset the claims promote from. Wakes a
-- waiting claim either way (one that finds it not yet due learns when it is and sleeps).
-- The caller saves `t`.
local function enqueue(t, now, ttl)
  local nb = tonumber(t.nb or '0') or 0
  if nb > now then
    t.why, t.avail = 'scheduled', nb
    place(t, 'd', nb, ttl + nb - now)
    set_task_ttl(t, ttl + nb - now, now)
  else
    t.why, t.avail = '', ''
    place(t, 'q', 0, ttl)
  end
  wake(t.type)
end

-- Task `first` settled for good: completed (failed = false), or dead-lettered or cancelled
-- (failed = true). Its waiting dependents lose one outstanding dependency — the last one makes
-- them claimable — or, when it failed and they ask for it (on_fail 'cancel'), are cancelled,
-- which settles their own dependents in turn (a worklist, not recursion). Runs inside the
-- settling script, so a dependent is released in the same atomic step as its last dependency
-- completes: no claim can see it early, and no background job is needed. `first` is saved
-- by the caller before this runs.
local function release_dependents(first, failed, now, ttl)
  local work = {{first, failed}}
  local i = 1
  while i <= #work do
    local id, bad = work[i][1], work[i][2]
    i = i + 1
    local list = redis.call('HGET', K_DEPS, id)
    if list then
      redis.call('HDEL', K_DEPS, id)
      local settled = load(id, now)
      local how = settled and settled.status
      for dependent in string.gmatch(list, '[^,]+') do
        local d = load(dependent, now)
        if d and d.status == 'pending' and d.why == 'deps' then
          if bad and d.on_fail ~= 'run' then
            local what = how == 'dead' and 'dead-lettered' or 'cancelled'
            d.status, d.why, d.updated = 'cancelled', '', now
            d.err = 'dependency ' .. id .. ' was ' .. what
            set_task_ttl(d, ttl, now)
            save(d)
            work[#work + 1] = {dependent, true}
          else
            local left = tonumber(d.deps_left) - 1
            d.deps_left = left
            if left <= 0 then
              d.updated = now
              set_task_ttl(d, ttl, now)
              enqueue(d, now, ttl)
            end
            save(d)
          end
        end
      end
    end
  end
end

-- The delay before retry number `attempts` + 1 under the task's backoff policy (ms; 0 when
-- it has none): min(maximum, initial * multiplier^(attempts - 1)).
local function policy_delay(t, attempts)
  if not t.bo_i then
    return 0
  end
  local delay = tonumber(t.bo_i) * tonumber(t.bo_m) ^ math.max(0, attempts - 1)
  return math.floor(math.min(tonumber(t.bo_x), delay))
end

-- A claim ended without success (FailTask or an expired lease): back to pending (keeping its
-- place in line, after `backoff` ms if > 0; backoff < 0 means "none given": the task's backoff
-- policy decides) or, when not retryable or out of attempts, dead (settling its dependents).
-- Saves `t`.
local function settle_failure(t, now, ttl, err, retryable, backoff)
  local attempts, max_attempts = tonumber(t.attempts), tonumber(t.max)
  unplace(t)
  if backoff < 0 then
    backoff = policy_delay(t, attempts)
  end
  t.err, t.updated = err, now
  if (not retryable) or attempts >= max_attempts then
    t.status, t.avail, t.why = 'dead', '', ''
    redis.call('ZADD', K_DEAD, now, t.id)
    extend_ttl(K_DEAD, ttl)
    set_task_ttl(t, ttl, now)
    save(t)
    release_dependents(t.id, true, now, ttl)
  elseif backoff > 0 then
    t.status, t.avail, t.why = 'pending', now + backoff, 'backoff'
    place(t, 'd', now + backoff, ttl + backoff)
    set_task_ttl(t, ttl + backoff, now)
    save(t)
    wake(t.type)  -- a waiting claim learns when it is due and sleeps until then
  else
    t.status, t.avail = 'pending', ''
    place(t, 'q', 0, ttl)
    set_task_ttl(t, ttl, now)
    save(t)
    wake(t.type)
  end
end

-- Settles the task `t` if it is claimed under a lease that has run out (FailTask's rule, error
-- 'lease expired'). Claims, GetTask and ListTasks all call it, so what a read reports is what
-- the next claim would find, and no background job has to have run. Returns true when the
-- task was settled back to pending (a waiting claim may want it).
local function settle_if_expired(t, now, ttl)
  if t.status == 'claimed' and tonumber(t.lease_exp) <= now then
    settle_failure(t, now, ttl, 'lease expired', true, -1)
    -- Counted for the agentcoord_task_lease_expiries metric.
    redis.call('INCR', K_EXPIRIES)
    extend_ttl(K_EXPIRIES, ttl)
    return t.status == 'pending'
  end
  return false
end

-- Checks that `agent` holds the live lease `token` on task `t` (nil: no such task). Returns
-- nil when it does, else the refusal to return from the script: {'cancelled'} when the task
-- was cancelled while `agent` held it under that token.
local function check_lease(t, token, agent, now)
  if not t then
    return {'not_found'}
  end
  if t.status == 'cancelled' and t.token == token and t.assignee == agent then
    return {'cancelled'}
  end
  if t.status ~= 'claimed' or t.token ~= token or t.assignee ~= agent then
    return {'lease_lost', t.status}
  end
  if tonumber(t.lease_exp) <= now then
    return {'lease_lost', 'expired'}
  end
  return nil
end

-- The types a claim looks at: `types` when given, else the caller's registered capabilities
-- (K_AGENT is the caller's registration). Returns nil when there are none.
local function claim_types(types)
  if #types > 0 then
    return types
  end
  local caps = redis.call('HGET', K_AGENT, 'caps')
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

-- The best queued member of `types`: member, type (nil when none is queued).
local function best_queued(types)
  local best_member, best_band, best_seq, best_type = nil, nil, nil, nil
  local numbers = redis.call('HMGET', K_TYPENO, unpack(types))
  for i, ttype in ipairs(types) do
    local n = tonumber(numbers[i])
    if n then
      local top = redis.call('ZRANGEBYSCORE', K_Q, n * 16, n * 16 + 15, 'WITHSCORES', 'LIMIT', 0, 1)
      if top[1] then
        local band, seq = tonumber(top[2]) - n * 16, tonumber(string.sub(top[1], 1, 13))
        if best_band == nil or band < best_band or (band == best_band and seq < best_seq) then
          best_member, best_band, best_seq, best_type = top[1], band, seq, ttype
        end
      end
    end
  end
  return best_member, best_type
end

-- ClaimTask's rule, shared with CompleteTask/FailTask's claim_next: leases the best pending
-- task of `types` to `agent` (the caller, K_AGENT) for `lease_ms`. Returns {'ok', task} or
-- {'empty', due} where due is the ms until the earliest lease or delay of the namespace runs
-- out (-1: none), so a waiting claim can look again then (any type's: the zsets are shared,
-- so a waiter may look once too early, never too late).
--
-- Before choosing, it reclaims expired leases and due delays (of every type: they share one
-- zset each), so a dead worker's task is claimable again by the first claim after its lease
-- expires — no background job is needed. The choice and the lease are one atomic step: one
-- claimant.
local function claim(agent, types, lease_ms, ttl, agent_ttl, now)
  -- A claim is a sign of life, like a heartbeat.
  if redis.call('EXISTS', K_AGENT) == 1 then
    redis.call('HSET', K_AGENT, 'seen', now)
    redis.call('PEXPIRE', K_AGENT, agent_ttl)
    redis.call('ZADD', K_AGENTS, 0, agent)
    extend_ttl(K_AGENTS, agent_ttl)
  end

  local BATCH = 100
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_L, '-inf', now, 'LIMIT', 0, BATCH)) do
    local t = load_raw(id)
    if t and t.at == 'l' and tonumber(t.exp or '0') <= now then
      drop(t)
    elseif t and t.at == 'l' and t.status == 'claimed' then
      settle_if_expired(t, now, ttl)
    elseif t and t.at == 'l' then
      unplace(t)
      save(t)
    else
      redis.call('ZREM', K_L, id)  -- a stale entry: its task is gone or elsewhere
    end
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_D, '-inf', now, 'LIMIT', 0, BATCH)) do
    local t = load_raw(id)
    if t and t.at == 'd' and tonumber(t.exp or '0') <= now then
      drop(t)
    elseif t and t.at == 'd' then
      if t.status == 'pending' then
        place(t, 'q', 0, ttl)
      else
        unplace(t)
      end
      save(t)
    else
      redis.call('ZREM', K_D, id)
    end
  end

  -- Queue members whose record expired (TASK TTL), or whose id has since been added again,
  -- are dropped as they surface.
  for _ = 1, BATCH do
    local member, ttype = best_queued(types)
    if member == nil then
      break
    end
    local t = load_raw(string.sub(member, 15))
    if not (t and t.at == 'q' and queue_member(t) == member) then
      redis.call('ZREM', K_Q, member)  -- stale
    elseif tonumber(t.exp or '0') <= now then
      drop(t)
    elseif t.type ~= ttype then
      place(t, 'q', 0, ttl)  -- filed under a number its type no longer has: refiled
      save(t)
    elseif t.status ~= 'pending' then
      unplace(t)
      save(t)
    else
      local token = redis.call('INCR', K_FENCE)
      local expiry = now + lease_ms
      t.attempts = tonumber(t.attempts) + 1
      t.status, t.assignee, t.token, t.lease_exp = 'claimed', agent, token, expiry
      t.updated, t.avail, t.why = now, '', ''
      place(t, 'l', expiry, ttl + lease_ms)
      set_task_ttl(t, ttl + lease_ms, now)
      save(t)
      return {'ok', flat(t)}
    end
  end

  local due = -1
  for _, key in ipairs({K_L, K_D}) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if first[1] then
      local ms = math.max(0, tonumber(first[2]) - now)
      if due < 0 or ms < due then
        due = ms
      end
    end
  end
  return {'empty', due}
end

-- The task `agent` claimed with the claim_next of the CompleteTask/FailTask that ended task
-- `t`, when that call is repeated: the same task while that lease is still the agent's.
local function claimed_next(t, agent, now)
  if not t.next then
    return nil
  end
  local n = load(t.next, now)
  if n and n.status == 'claimed' and n.assignee == agent and n.token == t.next_token then
    return flat(n)
  end
  return nil
end

-- Runs the claim_next of CompleteTask/FailTask for the task `t` just ended (saved) and
-- remembers on it what it leased (claimed_next), so a repeated call answers with the same
-- task. Returns the leased task (false when none was pending) and `t` as it now is.
local function claim_next(t, agent, types, lease_ms, ttl, agent_ttl, now)
  local reply = claim(agent, types, lease_ms, ttl, agent_ttl, now)
  if reply[1] ~= 'ok' then
    return false, t
  end
  local h = {}
  for i = 1, #reply[2], 2 do
    h[reply[2][i]] = reply[2][i + 1]
  end
  if h['id'] == t.id then
    t = load(t.id, now)  -- a failed task leased again: the claim's copy is the current one
  end
  t.next, t.next_token = h['id'], h['token']
  save(t)
  return reply[2], t
end
