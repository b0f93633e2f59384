-- AddTask. KEYS: see tasks_common.lua (KEYS[25]: the idempotency key
-- tasks:req:<agent>:<request id>, used only with a request id). ARGV: wake channel, task_id,
-- agent, type, description, priority (1..10), payload JSON, max_attempts, request_id ('' for
-- none), task TTL ms, the server's default pending-tasks quota (0: none; the namespace
-- record's "quota:pending_tasks" overrides it), not_before ms (0: none), dependency failure
-- policy ('cancel'|'run'), backoff policy initial ms (0: no policy), multiplier, maximum ms,
-- dependency ids….
-- Returns {'ok', task} | {'replayed', task} | {'exists'} | {'quota', limit, used} (the
-- namespace has as many pending tasks, queued or backing off, as its quota allows; nothing
-- written) | {'unknown_dep', id} (nothing written).
--
-- Dependencies must exist when the task is added, so the graph they form has no cycle. A
-- completed dependency counts as done; a dead-lettered or cancelled one settles the task at
-- once by its policy (cancelled, or counted as done); the others register the task in the
-- namespace's dependents hash (release_dependents settles it when they do).
local id, agent, ttype = ARGV[2], ARGV[3], ARGV[4]
local desc, pri, payload, max_attempts = ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8]
local req, ttl = ARGV[9], tonumber(ARGV[10])
local not_before, on_fail = tonumber(ARGV[12]), ARGV[13]
local bo_i, bo_m, bo_x = tonumber(ARGV[14]), ARGV[15], ARGV[16]
local deps = {unpack(ARGV, 17)}
local now = now_ms()
prune(now)

if req ~= '' then
  local earlier = redis.call('GET', K_EXTRA)
  if earlier then
    local e = load(earlier, now)
    if e then
      return {'replayed', flat(e)}
    end
  end
end

local old = load_raw(id)
if old then
  if tonumber(old.exp or '0') > now then
    return {'exists'}
  end
  drop(old)  -- its TASK TTL ran out: the id is free again
end

local limit = tonumber(redis.call('HGET', K_NAMESPACE, 'quota:pending_tasks') or '0')
if limit == 0 then
  limit = tonumber(ARGV[11] or '0')
end
if limit > 0 then
  local used = redis.call('ZCARD', K_Q) + redis.call('ZCARD', K_D)
  if used >= limit then
    return {'quota', limit, used}
  end
end

local left, waiting, failed_dep = 0, {}, nil
for _, dep in ipairs(deps) do
  local d = load(dep, now)
  if not d then
    return {'unknown_dep', dep}
  end
  local status = d.status
  if status == 'dead' or status == 'cancelled' then
    if on_fail ~= 'run' and not failed_dep then
      failed_dep = 'dependency ' .. dep .. ' was ' .. (status == 'dead' and 'dead-lettered' or 'cancelled')
    end
  elseif status ~= 'completed' then
    left = left + 1
    waiting[#waiting + 1] = dep
  end
end

local seq = redis.call('INCR', K_SEQ)
local t = {
  id = id, type = ttype, desc = desc, pri = pri, payload = payload, status = 'pending',
  attempts = 0, max = max_attempts, by = agent, created = now, updated = now, seq = seq}
if #deps > 0 then
  t.deps, t.deps_left, t.on_fail = table.concat(deps, ','), left, on_fail
end
if not_before > 0 then
  t.nb = not_before
end
if bo_i > 0 then
  t.bo_i, t.bo_m, t.bo_x = bo_i, bo_m, bo_x
end
set_task_ttl(t, ttl, now)

if failed_dep then
  t.status, t.err = 'cancelled', failed_dep
elseif left > 0 then
  t.why = 'deps'
  for _, dep in ipairs(waiting) do
    local list = redis.call('HGET', K_DEPS, dep) or ','
    redis.call('HSET', K_DEPS, dep, list .. id .. ',')
  end
  extend_ttl(K_DEPS, ttl)
else
  enqueue(t, now, ttl)
end
save(t)
redis.call('ZADD', K_INDEX, seq, id)
extend_ttl(K_INDEX, ttl)
-- The types tasks were added to, by latest add: GetServerStats counts each type's tasks.
-- A type nobody added to for two TASK TTLs is dropped (its tasks have almost surely expired).
redis.call('ZADD', K_TYPES, now, ttype)
redis.call('ZREMRANGEBYSCORE', K_TYPES, '-inf', now - 2 * ttl)
extend_ttl(K_TYPES, 2 * ttl)
if req ~= '' then
  redis.call('SET', K_EXTRA, id, 'PX', ttl)
end
return {'ok', flat(t)}
