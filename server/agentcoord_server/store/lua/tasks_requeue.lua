-- RequeueDeadLetter. KEYS: see tasks_common.lua. ARGV: wake channel, task_id, task TTL ms.
-- Returns {'ok', task} | {'not_found'} | {'not_dead', status}.
local id, ttl = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local t = load(id, now)
if not t then
  return {'not_found'}
end
if t.status ~= 'dead' then
  return {'not_dead', t.status}
end
redis.call('ZREM', K_DEAD, id)
t.status, t.attempts, t.updated, t.avail = 'pending', 0, now, ''
place(t, 'q', 0, ttl)
set_task_ttl(t, ttl, now)
save(t)
wake(t.type)
return {'ok', flat(t)}
