-- ListTasks / ListDeadLetters. ARGV: prefix, index ('index' or 'dead'), cursor score ('' for
-- the start), cursor id, page size, status filter, type filter, assignee filter, budget.
-- Returns {next cursor score ('' when done), next cursor id, {task, …}}.
--
-- Walks the index zset from the cursor (score, then id: Redis orders ties by member), so pages
-- neither skip nor repeat; examines at most `budget` entries per call. Entries whose task hash
-- has expired (TASK TTL) are removed once the walk is over.
local P, which, cur_score, cur_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local page_size, want_status, want_type, want_assignee = tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
local budget = tonumber(ARGV[9])
local index = P .. 'tasks:' .. which
local out, gone = {}, {}
local examined = 0
local min = cur_score == '' and '-inf' or cur_score
local floor = cur_score == '' and nil or tonumber(cur_score)
local offset = 0

local function finish(score, id)
  for _, dead_id in ipairs(gone) do
    redis.call('ZREM', index, dead_id)
  end
  return {score, id, out}
end

while true do
  local batch = redis.call('ZRANGEBYSCORE', index, min, '+inf', 'WITHSCORES', 'LIMIT', offset, 200)
  if #batch == 0 then
    return finish('', '')
  end
  offset = offset + #batch / 2
  for i = 1, #batch, 2 do
    local id, score = batch[i], batch[i + 1]
    if floor == nil or tonumber(score) > floor or id > cur_id then
      examined = examined + 1
      local tkey = P .. 'tasks:t:' .. id
      local f = redis.call('HMGET', tkey, 'status', 'type', 'assignee')
      if not f[1] then
        gone[#gone + 1] = id
      elseif (want_status == '' or f[1] == want_status) and (want_type == '' or f[2] == want_type)
        and (want_assignee == '' or f[3] == want_assignee) then
        out[#out + 1] = redis.call('HGETALL', tkey)
      end
      if #out >= page_size or examined >= budget then
        return finish(score, id)
      end
    end
  end
end
