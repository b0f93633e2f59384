-- RequeueDeadLetter. ARGV: prefix, task_id, task TTL ms.
-- Returns {'ok', task} | {'not_found'} | {'not_dead', status}.
local P, id, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local tkey = P .. 'tasks:t:' .. id
local f = redis.call('HMGET', tkey, 'status', 'type', 'score')
if not f[1] then
  return {'not_found'}
end
if f[1] ~= 'dead' then
  return {'not_dead', f[1]}
end
local now = now_ms()
redis.call('ZREM', P .. 'tasks:dead', id)
redis.call('HSET', tkey, 'status', 'pending', 'attempts', 0, 'updated', now, 'avail', '')
local queue = P .. 'tasks:q:' .. f[2]
redis.call('ZADD', queue, f[3], id)
extend_ttl(queue, ttl)
set_task_ttl(P, tkey, ttl, now)
wake(P, f[2])
return {'ok', redis.call('HGETALL', tkey)}
