-- CompleteTask. ARGV: prefix, task_id, fencing token, agent, result JSON, task TTL ms,
-- recent summaries kept, largest result kept in a summary (bytes).
-- Returns {'ok', task} | {'not_found'} | {'lease_lost', why}.
-- Counts are HINCRBY'd here, in the same atomic step, so AggregateResults is exact.
local P, id, token, agent, result = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ttl, recent_n, summary_max = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local now = now_ms()
local tkey = P .. 'tasks:t:' .. id

local f = redis.call('HMGET', tkey, 'status', 'token', 'assignee')
if f[1] == 'completed' and f[2] == token and f[3] == agent then
  return {'ok', redis.call('HGETALL', tkey)}  -- a repeat of our own completion
end
local refused = check_lease(tkey, token, agent, now)
if refused then
  return refused
end

local ttype = redis.call('HGET', tkey, 'type')
redis.call('HSET', tkey, 'status', 'completed', 'result', result, 'completed', now,
  'updated', now)
redis.call('ZREM', P .. 'tasks:l:' .. ttype, id)
set_task_ttl(P, tkey, ttl, now)

local function count(key, field)
  redis.call('HINCRBY', key, field, 1)
  extend_ttl(key, ttl)
end
count(P .. 'tasks:stats', 'total')
count(P .. 'tasks:stats:agents', agent)
count(P .. 'tasks:stats:types', ttype)
count(P .. 'tasks:stats:agents:' .. ttype, agent)

local kept = result
if #result > summary_max then
  kept = false
end
local summary = cjson.encode({id = id, type = ttype, agent = agent, at = now, result = kept})
for _, key in ipairs({P .. 'tasks:recent', P .. 'tasks:recent:' .. ttype}) do
  redis.call('LPUSH', key, summary)
  redis.call('LTRIM', key, 0, recent_n - 1)
  extend_ttl(key, ttl)
end
return {'ok', redis.call('HGETALL', tkey)}
