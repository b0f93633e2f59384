-- A participant's activity in a session, atomically with its check and the TTL refresh
-- (MemoryStore.join_session / leave_session / share_context / read_context).
-- KEYS[1] info hash, KEYS[2] participants set, KEYS[3] shared context hash (field = context key,
-- value = serialized SharedContextItem), KEYS[4] session index, KEYS[5] session expiry index,
-- KEYS[6] the namespace's working-memory revision, KEYS[7] its event log (share emits a PUT
-- event with the session id; memory_events.lua is prepended), KEYS[8] its expiry set (the
-- session's member '/<id>' follows the session's expiry; see memory_session_create.lua)
-- ARGV[1] session id, ARGV[2] op: join | leave | share | read, ARGV[3] the caller's agent id,
-- ARGV[4] now ms, ARGV[5] session ttl ms, ARGV[6] context key ('' with read: all),
-- ARGV[7] serialized SharedContextItem (share), ARGV[8] most participants a session may have
-- (join), ARGV[9] events the log keeps
-- Returns {'NO_SESSION'}, {'NOT_A_PARTICIPANT'} or {'SESSION_FULL'} and changes nothing; else
--   join/leave: {'OK', purpose, metadata, created by, create ms, expire ms, {participants}}
--   share: {'OK', expire ms}
--   read: {'OK', expire ms, {items}} or {'NO_CONTEXT', expire ms} for a missing named key.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NO_SESSION'} end
local op, agent = ARGV[2], ARGV[3]
if op ~= 'join' and redis.call('SISMEMBER', KEYS[2], agent) == 0 then
  return {'NOT_A_PARTICIPANT'}
end
local status, items = 'OK', nil
if op == 'join' then
  -- Bounded so a session (its participants are in every response about it) fits one message.
  if redis.call('SISMEMBER', KEYS[2], agent) == 0
      and redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[8]) then
    return {'SESSION_FULL'}
  end
  redis.call('SADD', KEYS[2], agent)
elseif op == 'leave' then
  redis.call('SREM', KEYS[2], agent)
elseif op == 'share' then
  redis.call('HSET', KEYS[3], ARGV[6], ARGV[7])
  NS.rev, NS.log, NS.history = KEYS[6], KEYS[7], ARGV[9]
  emit('P', agent, ARGV[6], ARGV[4], ARGV[1], ARGV[7], 0)
elseif ARGV[6] ~= '' then
  local item = redis.call('HGET', KEYS[3], ARGV[6])
  if item then items = {item} else status = 'NO_CONTEXT' end
else
  items = redis.call('HVALS', KEYS[3])
end
-- Any participant activity restarts the session's TTL on all its keys (the context expires
-- with its session) and moves its place in the expiry index. It is (re)added to the id index
-- too: pruning compares scores with a server's clock, so a session still live in Redis may
-- have been pruned at the edge of its expiry (or by a server whose clock runs ahead).
local ttl = tonumber(ARGV[5])
local expire = tonumber(ARGV[4]) + ttl
redis.call('HSET', KEYS[1], 'e', expire)
for j = 1, 3 do redis.call('PEXPIRE', KEYS[j], ttl) end
redis.call('ZADD', KEYS[4], 0, ARGV[1])
redis.call('ZADD', KEYS[5], expire, ARGV[1])
for j = 4, 5 do
  if redis.call('PTTL', KEYS[j]) < ttl then redis.call('PEXPIRE', KEYS[j], ttl) end
end
-- XX: only moved later, never added (a session created before watching existed has none), so
-- the sweep's schedule never has to move earlier for it.
redis.call('ZADD', KEYS[8], 'XX', expire, '/' .. ARGV[1])
if op == 'join' or op == 'leave' then
  local info = redis.call('HMGET', KEYS[1], 'p', 'm', 'b', 'c')
  return {'OK', info[1], info[2], info[3], info[4], expire, redis.call('SMEMBERS', KEYS[2])}
end
if items == nil then return {status, expire} end
return {status, expire, items}
