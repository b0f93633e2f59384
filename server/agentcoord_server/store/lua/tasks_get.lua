-- GetTask. KEYS: see tasks_common.lua. ARGV: wake channel, task_id, task TTL ms.
-- Returns {} when the task does not exist, else {woke ('1' when an expired lease was just
-- settled back to pending, else '0'), task}.
-- A task whose lease has run out is settled here first (settle_if_expired), so a read never
-- reports a dead worker's task as CLAIMED.
local id, ttl = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local t = load(id, now)
if not t then
  return {}
end
local woke = settle_if_expired(t, now, ttl)
return {woke and '1' or '0', flat(t)}
