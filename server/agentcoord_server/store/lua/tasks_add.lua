-- AddTask. ARGV: prefix, task_id, agent, type, description, priority (1..10), payload JSON,
-- max_attempts, request_id ('' for none), task TTL ms, the server's default pending-tasks
-- quota (0: none; the namespace record's "quota:pending_tasks" overrides it).
-- Returns {'ok', task} | {'replayed', task} | {'exists'} | {'quota', limit, used} (the
-- namespace has as many pending tasks, queued or backing off, as its quota allows; nothing
-- written). The count walks the namespace's task types, so it is done only under a quota.
local P, id, agent, ttype = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local desc, pri, payload, max_attempts = ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8]
local req, ttl = ARGV[9], tonumber(ARGV[10])
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

local seq = redis.call('INCR', P .. 'tasks:seq')
-- (10 - priority) band then add order: ZRANGE 0 0 is the highest priority, oldest first.
-- Built as a string so the 14-digit score never goes through Lua's number formatting.
local score = tostring(10 - pri) .. string.format('%013d', seq)
redis.call('HSET', tkey,
  'id', id, 'type', ttype, 'desc', desc, 'pri', pri, 'payload', payload,
  'status', 'pending', 'attempts', 0, 'max', max_attempts, 'by', agent,
  'created', now, 'updated', now, 'score', score, 'seq', seq)
set_task_ttl(P, tkey, ttl, now)

local queue = P .. 'tasks:q:' .. ttype
redis.call('ZADD', queue, score, id)
extend_ttl(queue, ttl)
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
wake(P, ttype)
return {'ok', redis.call('HGETALL', tkey)}
