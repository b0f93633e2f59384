-- GetTask. ARGV: prefix, task_id, task TTL ms.
-- Returns {} when the task does not exist, else {woke ('1' when an expired lease was just
-- settled back to pending, else '0'), task}.
-- A task whose lease has run out is settled here first (settle_if_expired), so a read never
-- reports a dead worker's task as CLAIMED.
local P, id, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local tkey = P .. 'tasks:t:' .. id
if redis.call('EXISTS', tkey) == 0 then
  return {}
end
local woke = settle_if_expired(P, id, now_ms(), ttl)
return {woke and '1' or '0', redis.call('HGETALL', tkey)}
