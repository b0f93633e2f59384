-- The sweep's schedule of namespaces with expiring entries (MemoryExpirySweeper), one key for
-- the whole server: ac:memory-expiring ZSET member namespace, score the ms when its earliest
-- entry is due. Scores set by stashes are whole ms; a sweeper's claim is a .5 score.
-- KEYS[1] the schedule; ARGV[1] op, ARGV[2] namespace, then:
--   claim: ARGV[3] now ms, ARGV[4] claim ms (now + lease). A due namespace is claimed (its
--          score becomes claim + .5) so one process sweeps it; returns the claim or false.
--   done:  ARGV[3] the claim, ARGV[4] the namespace's earliest expiry left ('' : none). If no
--          stash touched the score since the claim, it becomes that expiry (none: removed);
--          otherwise it is lowered to it only.
--   due:   ARGV[3] the namespace's new earliest expiry (a stash moved it earlier): lowers the
--          score to it, and replaces a claim (whose sweeper then leaves it).
local op, ns = ARGV[1], ARGV[2]
local score = redis.call('ZSCORE', KEYS[1], ns)
if op == 'claim' then
  if not score or tonumber(score) > tonumber(ARGV[3]) then return false end
  local claim = tonumber(ARGV[4]) + 0.5
  redis.call('ZADD', KEYS[1], claim, ns)
  return tostring(claim)
end
if op == 'done' then
  local left = tonumber(ARGV[4])
  if score == ARGV[3] or (score and tonumber(score) == tonumber(ARGV[3])) then
    if left then redis.call('ZADD', KEYS[1], left, ns) else redis.call('ZREM', KEYS[1], ns) end
  elseif left and score and left < tonumber(score) then
    redis.call('ZADD', KEYS[1], left, ns)
  elseif left and not score then
    redis.call('ZADD', KEYS[1], left, ns)
  end
  return 1
end
local due = tonumber(ARGV[3])
if not score then
  redis.call('ZADD', KEYS[1], due, ns)
else
  local s = tonumber(score)
  if due < s or s ~= math.floor(s) then redis.call('ZADD', KEYS[1], due, ns) end
end
return 1
