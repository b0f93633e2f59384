-- AddTask. ARGV: prefix, task_id, agent, type, description, priority (1..10), payload JSON,
-- max_attempts, request_id ('' for none), task TTL ms, the server's default pending-tasks
-- quota (0: none; the namespace record's "quota:pending_tasks" overrides it), not_before ms
-- (0: none), dependency failure policy ('cancel'|'run'), backoff policy initial ms (0: no
-- policy), multiplier, maximum ms, dependency ids….
-- Returns {'ok', task} | {'replayed', task} | {'exists'} | {'quota', limit, used} (the
-- namespace has as many pending tasks, queued or backing off, as its quota allows; nothing
-- written) | {'unknown_dep', id} (nothing written). The count walks the namespace's task
-- types, so it is done only under a quota.
--
-- Dependencies must exist when the task is added, so the graph they form has no cycle. A
-- completed dependency counts as done; a dead-lettered or cancelled one settles the task at
-- once by its policy (cancelled, or counted as done); the others register the task in the
-- namespace's dependents hash (release_dependents settles it when they do).
local P, id, agent, ttype = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local desc, pri, payload, max_attempts = ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8]
local req, ttl = ARGV[9], tonumber(ARGV[10])
local not_before, on_fail = tonumber(ARGV[12]), ARGV[13]
local bo_i, bo_m, bo_x = tonumber(ARGV[14]), ARGV[15], ARGV[16]
local deps = {unpack(ARGV, 17)}
local now = now_ms()

local rkey = nil
if req ~= '' then
  rkey = P .. 'tasks:req:' .. agent .. ':' .. req
  local earlier = redis.call('GET', rkey)
  if earlier then
    local ekey = P .. 'tasks:t:' .. earlier
    if redis.call('EXISTS', ekey) == 1 then
      return {'replayed', redis.call('HGETALL', ekey)}
    end
  end
end

local tkey = P .. 'tasks:t:' .. id
if redis.call('EXISTS', tkey) == 1 then
  return {'exists'}
end

local limit = tonumber(redis.call('HGET', P .. 'namespace', 'quota:pending_tasks') or '0')
if limit == 0 then
  limit = tonumber(ARGV[11] or '0')
end
if limit > 0 then
  local used = 0
  for _, t in ipairs(redis.call('ZRANGE', P .. 'tasks:types', 0, -1)) do
    used = used + redis.call('ZCARD', P .. 'tasks:q:' .. t) + redis.call('ZCARD', P .. 'tasks:d:' .. t)
  end
  if used >= limit then
    return {'quota', limit, used}
  end
end

local left, waiting, failed_dep = 0, {}, nil
for _, dep in ipairs(deps) do
  local status = redis.call('HGET', P .. 'tasks:t:' .. dep, 'status')
  if not status then
    return {'unknown_dep', dep}
  end
  if status == 'dead' or status == 'cancelled' then
    if on_fail ~= 'run' and not failed_dep then
      failed_dep = 'dependency ' .. dep .. ' was ' .. (status == 'dead' and 'dead-lettered' or 'cancelled')
    end
  elseif status ~= 'completed' then
    left = left + 1
    waiting[#waiting + 1] = dep
  end
end

local seq = redis.call('INCR', P .. 'tasks:seq')
-- (10 - priority) band then add order: ZRANGE 0 0 is the highest priority, oldest first.
-- Built as a string so the 14-digit score never goes through Lua's number formatting.
local score = tostring(10 - pri) .. string.format('%013d', seq)
redis.call('HSET', tkey,
  'id', id, 'type', ttype, 'desc', desc, 'pri', pri, 'payload', payload,
  'status', 'pending', 'attempts', 0, 'max', max_attempts, 'by', agent,
  'created', now, 'updated', now, 'score', score, 'seq', seq)
if #deps > 0 then
  redis.call('HSET', tkey, 'deps', table.concat(deps, ','), 'deps_left', left, 'on_fail', on_fail)
end
if not_before > 0 then
  redis.call('HSET', tkey, 'nb', not_before)
end
if bo_i > 0 then
  redis.call('HSET', tkey, 'bo_i', bo_i, 'bo_m', bo_m, 'bo_x', bo_x)
end
set_task_ttl(P, tkey, ttl, now)

if failed_dep then
  redis.call('HSET', tkey, 'status', 'cancelled', 'err', failed_dep)
elseif left > 0 then
  redis.call('HSET', tkey, 'why', 'deps')
  local dependents = P .. 'tasks:deps'
  for _, dep in ipairs(waiting) do
    local list = redis.call('HGET', dependents, dep) or ','
    redis.call('HSET', dependents, dep, list .. id .. ',')
  end
  extend_ttl(dependents, ttl)
else
  enqueue(P, id, now, ttl)
end
local index = P .. 'tasks:index'
redis.call('ZADD', index, seq, id)
extend_ttl(index, ttl)
-- The types tasks were added to, by latest add: GetServerStats counts each type's queues.
-- A type nobody added to for two TASK TTLs is dropped (its tasks have almost surely expired).
local types = P .. 'tasks:types'
redis.call('ZADD', types, now, ttype)
redis.call('ZREMRANGEBYSCORE', types, '-inf', now - 2 * ttl)
extend_ttl(types, 2 * ttl)
if rkey then
  redis.call('SET', rkey, id, 'PX', ttl)
end
return {'ok', redis.call('HGETALL', tkey)}
