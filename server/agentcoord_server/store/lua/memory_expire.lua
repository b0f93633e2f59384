-- Emits EXPIRE for entries whose TTL has run out and removes them (MemoryExpirySweeper; every
-- server process runs it, and a member's removal from the expiry set makes each EXPIRE
-- happen once; memory_events.lua is prepended).
-- KEYS[1] the namespace's expiry set, KEYS[2] its revision, KEYS[3] its event log; per member
-- i: KEYS[3i+1] entry hash, KEYS[3i+2] owner's key index, KEYS[3i+3] owner's expiry index.
-- ARGV[1] now ms, ARGV[2] events the log keeps; per member i: ARGV[2i+1] owner, ARGV[2i+2] key
-- (the sweep read the due members first; they are checked again here).
-- Returns {EXPIRE events emitted, the set's earliest score left or false}.
local now, history = tonumber(ARGV[1]), ARGV[2]
local count = 0
for i = 1, (#KEYS - 3) / 3 do
  local owner, key = ARGV[2 * i + 1], ARGV[2 * i + 2]
  local score = redis.call('ZSCORE', KEYS[1], owner .. '/' .. key)
  if score and tonumber(score) <= now then
    expire_due(KEYS[1], KEYS[2], KEYS[3], history, KEYS[3 * i + 1], KEYS[3 * i + 2],
               KEYS[3 * i + 3], owner, key, now)
    count = count + 1
  end
end
local left = earliest(KEYS[1])
if left then return {count, tostring(left)} end
return {count, false}
