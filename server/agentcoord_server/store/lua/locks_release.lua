-- Releases a lock (LockStore.release) and wakes one waiting acquirer in each server process.
-- KEYS[1] the lock's hash (see locks_acquire.lua)
-- ARGV[1] the agent; ARGV[2] the fencing token; ARGV[3] '1' to release whoever holds it
-- (a STEWARD's force); ARGV[4] the namespace's lock wake-up channel (pub/sub, not a key: it
-- names no data); ARGV[5] the lock id (the message: store/lock_wakeups.py wakes its waiters)
-- Returns {'ok', holder, token, acquired ms, released ms} or {'not_held'}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('HMGET', KEYS[1], 'holder', 'token', 'acquired')
if not held[1] or (ARGV[3] ~= '1' and (held[1] ~= ARGV[1] or held[2] ~= ARGV[2])) then
  return {'not_held'}
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return {'ok', held[1], held[2], held[3], now}
