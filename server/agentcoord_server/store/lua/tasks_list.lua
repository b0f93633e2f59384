-- ListTasks / ListDeadLetters. KEYS: see tasks_common.lua. ARGV: wake channel, index
-- ('index': KEYS[7], or 'dead': KEYS[8]), cursor score ('' for the start), cursor id, page size, status filter, type filter, assignee filter, budget,
-- task TTL ms.
-- Returns {next cursor score ('' when done), next cursor id, {task, …}, woke ('1' when an
-- expired lease was settled back to pending, else '0')}.
--
-- Walks the index zset from the cursor (score, then id: Redis orders ties by member), so pages
-- neither skip nor repeat; examines at most `budget` entries per call. Entries whose task record
-- has expired (TASK TTL) are removed once the walk is over. A task met under a lease that has
-- run out is settled before the filters look at it (settle_if_expired), so the statuses and
-- filters see what the next claim would find.
local which, cur_score, cur_id = ARGV[2], ARGV[3], ARGV[4]
local page_size, want_status, want_type, want_assignee = tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
local budget, ttl = tonumber(ARGV[9]), tonumber(ARGV[10])
local now = now_ms()
local woke = false
local index = which == 'dead' and K_DEAD or K_INDEX
local out, gone = {}, {}
local examined = 0
local min = cur_score == '' and '-inf' or cur_score
local floor = cur_score == '' and nil or tonumber(cur_score)
local offset = 0

-- a > b in byte order, which is how Redis orders members of equal score. Lua's '>' on strings
-- follows the server's LC_COLLATE (Redis calls setlocale), which under e.g. en_US.UTF-8 puts
-- 'a' before 'B' and would make pages skip or repeat ids that tie on score.
local function bytes_after(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x > y
    end
  end
  return #a > #b
end

local function finish(score, id)
  for _, dead_id in ipairs(gone) do
    redis.call('ZREM', index, dead_id)
  end
  return {score, id, out, woke and '1' or '0'}
end

while true do
  local batch = redis.call('ZRANGEBYSCORE', index, min, '+inf', 'WITHSCORES', 'LIMIT', offset, 200)
  if #batch == 0 then
    return finish('', '')
  end
  offset = offset + #batch / 2
  for i = 1, #batch, 2 do
    local id, score = batch[i], batch[i + 1]
    if floor == nil or tonumber(score) > floor or bytes_after(id, cur_id) then
      examined = examined + 1
      local t = load(id, now)
      if t and t.status == 'claimed' then
        woke = settle_if_expired(t, now, ttl) or woke
      end
      if not t then
        gone[#gone + 1] = id
      elseif (want_status == '' or t.status == want_status)
        and (want_type == '' or t.type == want_type)
        and (want_assignee == '' or t.assignee == want_assignee) then
        out[#out + 1] = flat(t)
      end
      if #out >= page_size or examined >= budget then
        return finish(score, id)
      end
    end
  end
end
