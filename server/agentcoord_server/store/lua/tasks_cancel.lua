-- CancelTask. KEYS: see tasks_common.lua (KEYS[25]: the namespace's signals stream,
-- store/signals.py). ARGV: wake channel, task_id, agent, privileged ('1' for VALIDATOR+),
-- task TTL ms, the cancellation signal's type, agent TTL ms.
-- Returns {'ok', task} | {'not_found'} | {'denied'} | {'completed'}.
--
-- A claimed task's holder learns of it in this same step: a signal targeted at it is appended
-- to the signals stream (fields as signals_send.lua writes them: t type, s sender, d data, a
-- target; the next send or read trims the stream by age as usual), and agents:cx remembers
-- the task id for the holder's next Heartbeat (RegisterAgent clears it, as re-registering
-- dropped the registration that used to hold it). The task keeps its token and assignee, so
-- the holder's RenewTaskLease answers TASK_CANCELLED rather than LEASE_LOST.
-- Dependents waiting for the task are settled by their policy (release_dependents).
local id, agent, privileged, ttl = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local agent_ttl = tonumber(ARGV[7])
local now = now_ms()
local t = load(id, now)
if not t then
  return {'not_found'}
end
if t.by ~= agent and privileged ~= '1' then
  return {'denied'}
end
if t.status == 'completed' then
  return {'completed'}
end
if t.status ~= 'cancelled' then
  local was = t.status
  unplace(t)
  redis.call('ZREM', K_DEAD, id)
  t.status, t.updated, t.avail, t.why = 'cancelled', now, '', ''
  set_task_ttl(t, ttl, now)
  save(t)
  if was == 'claimed' then
    local data = cjson.encode({task_id = id, fencing_token = tonumber(t.token)})
    redis.call('XADD', K_EXTRA, '*', 't', ARGV[6], 's', agent, 'd', data, 'a', t.assignee)
    local cx = redis.call('HGET', K_CX, t.assignee)
    redis.call('HSET', K_CX, t.assignee, cx and (cx .. ',' .. id) or id)
    extend_ttl(K_CX, agent_ttl)
  end
  if was ~= 'dead' then
    release_dependents(id, true, now, ttl)
  end
end
return {'ok', flat(load(id, now))}
