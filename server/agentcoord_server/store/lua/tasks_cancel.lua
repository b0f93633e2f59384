-- CancelTask. ARGV: prefix, task_id, agent, privileged ('1' for VALIDATOR+), task TTL ms.
-- Returns {'ok', task} | {'not_found'} | {'denied'} | {'completed'}.
local P, id, agent, privileged, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local tkey = P .. 'tasks:t:' .. id
local f = redis.call('HMGET', tkey, 'status', 'by', 'type')
if not f[1] then
  return {'not_found'}
end
if f[2] ~= agent and privileged ~= '1' then
  return {'denied'}
end
if f[1] == 'completed' then
  return {'completed'}
end
if f[1] ~= 'cancelled' then
  local now = now_ms()
  for _, key in ipairs({'tasks:q:', 'tasks:d:', 'tasks:l:'}) do
    redis.call('ZREM', P .. key .. f[3], id)
  end
  redis.call('ZREM', P .. 'tasks:dead', id)
  redis.call('HSET', tkey, 'status', 'cancelled', 'updated', now, 'avail', '')
  set_task_ttl(P, tkey, ttl, now)
end
return {'ok', redis.call('HGETALL', tkey)}
