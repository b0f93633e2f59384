-- CancelTask. KEYS[1] the namespace's tasks:seq (routing only), KEYS[2] the namespace's signals
-- stream (store/signals.py). ARGV: prefix, task_id, agent, privileged ('1' for VALIDATOR+), task
-- TTL ms, the cancellation signal's type.
-- Returns {'ok', task} | {'not_found'} | {'denied'} | {'completed'}.
--
-- A claimed task's holder learns of it in this same step: a signal targeted at it is appended
-- to the signals stream (fields as signals_send.lua writes them: t type, s sender, d data, a
-- target; the next send or read trims the stream by age as usual), and its registration, if it
-- has one, remembers the task id ('cx') for its next Heartbeat. The task keeps its token and
-- assignee, so the holder's RenewTaskLease answers TASK_CANCELLED rather than LEASE_LOST.
-- Dependents waiting for the task are settled by their policy (release_dependents).
local P, id, agent, privileged, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local tkey = P .. 'tasks:t:' .. id
local f = redis.call('HMGET', tkey, 'status', 'by', 'type', 'assignee', 'token')
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
  redis.call('HSET', tkey, 'status', 'cancelled', 'updated', now, 'avail', '', 'why', '')
  set_task_ttl(P, tkey, ttl, now)
  if f[1] == 'claimed' then
    local data = cjson.encode({task_id = id, fencing_token = tonumber(f[5])})
    redis.call('XADD', KEYS[2], '*', 't', ARGV[6], 's', agent, 'd', data, 'a', f[4])
    local akey = P .. 'agents:a:' .. f[4]
    if redis.call('EXISTS', akey) == 1 then
      local cx = redis.call('HGET', akey, 'cx')
      redis.call('HSET', akey, 'cx', cx and (cx .. ',' .. id) or id)
    end
  end
  if f[1] ~= 'dead' then
    release_dependents(P, id, true, now, ttl)
  end
end
return {'ok', redis.call('HGETALL', tkey)}
