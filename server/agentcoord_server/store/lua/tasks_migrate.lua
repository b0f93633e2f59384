-- Moves one namespace's keys of the task layout before issue 13 (a key per task, per-type
-- queues and stats) into the one of tasks_common.lua; run at start (store/tasks_migrate.py).
-- KEYS[1..25] as for every tasks script, then the old keys, KEYS[25 + i] of kind ARGV[3 + i]:
--   't'         a task hash (tasks:t:<id>): its record, placed in the queue, lease or delayed
--               zset its status and wait reason say, living as long as the hash had left
--   'z'         a per-type queue, lease or delayed zset: deleted (the records say it all)
--   's:<type>'  a type's completions by agent: added to tasks:stats:type_agents
--   'r:<type>'  a type's recent summaries (newest first): pushed into its ring, oldest first
--   'a:<agent>' a registration: its cancellation notices ('cx') move to agents:cx
-- ARGV: wake channel, task TTL ms, recent summaries kept per type.
-- A key of an unexpected type is left alone. Each old key is deleted (or its field) in the step that moved it, so a repeated or
-- interrupted run moves nothing twice. Returns how many task records were moved.
local ttl, recent_n = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local moved = 0
-- The type each kind of old key has: a key of another type is not one of ours, and is left.
local WANT = {t = 'hash', z = 'zset', s = 'hash', r = 'list', a = 'hash'}
for i = 26, #KEYS do
  local old, kind = KEYS[i], ARGV[i - 22]
  if redis.call('TYPE', old)['ok'] ~= WANT[string.sub(kind, 1, 1)] then
    kind = ''
  end
  if kind == 't' then
    local h = redis.call('HGETALL', old)
    local pttl = redis.call('PTTL', old)
    if #h > 0 then
      local t = {}
      for j = 1, #h, 2 do
        t[h[j]] = h[j + 1]
      end
      t.score, t.at = nil, nil
      local live = load(t.id, now)
      if not live then
        local ms = pttl >= 0 and pttl or ttl
        if t.status == 'pending' and (t.why == 'scheduled' or t.why == 'backoff') then
          place(t, 'd', tonumber(t.avail), ms)
        elseif t.status == 'pending' and t.why ~= 'deps' then
          place(t, 'q', 0, ms)
          wake(t.type)
        elseif t.status == 'claimed' then
          place(t, 'l', tonumber(t.lease_exp), ms)
        end
        set_task_ttl(t, ms, now)
        save(t)
        moved = moved + 1
      end
    end
    redis.call('DEL', old)
  elseif kind == 'z' then
    redis.call('DEL', old)
  elseif string.sub(kind, 1, 2) == 's:' then
    local ttype = string.sub(kind, 3)
    local h = redis.call('HGETALL', old)
    for j = 1, #h, 2 do
      redis.call('HINCRBY', K_STATS_TYPE_AGENTS, ttype .. ':' .. h[j], h[j + 1])
    end
    extend_ttl(K_STATS_TYPE_AGENTS, ttl)
    redis.call('DEL', old)
  elseif string.sub(kind, 1, 2) == 'r:' then
    local ttype = string.sub(kind, 3)
    local items = redis.call('LRANGE', old, 0, recent_n - 1)
    for j = #items, 1, -1 do
      local n = redis.call('HINCRBY', K_RECENT_TYPES, ttype .. ':n', 1)
      redis.call('HSET', K_RECENT_TYPES, ttype .. ':' .. ((n - 1) % recent_n), items[j])
    end
    extend_ttl(K_RECENT_TYPES, ttl)
    redis.call('DEL', old)
  elseif string.sub(kind, 1, 2) == 'a:' then
    local cx = redis.call('HGET', old, 'cx')
    if cx then
      local agent = string.sub(kind, 3)
      local had = redis.call('HGET', K_CX, agent)
      redis.call('HSET', K_CX, agent, had and (had .. ',' .. cx) or cx)
      local left = redis.call('PTTL', old)
      extend_ttl(K_CX, left > 0 and left or ttl)
      redis.call('HDEL', old, 'cx')
    end
  end
end
return moved
