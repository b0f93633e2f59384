-- Emits EXPIRE for entries whose TTL has run out and removes them (MemoryExpirySweeper; every
-- server process runs it, and a member's removal from the expiry set makes each EXPIRE
-- happen once; memory_events.lua is prepended).
-- KEYS[1..5] the namespace keys of memory_events.lua; per member i: KEYS[3i+3] entry hash,
-- KEYS[3i+4] owner's key index, KEYS[3i+5] owner's expiry index; for a session (owner '')
-- its shared context hash, info hash and participants set.
-- ARGV[1] now ms, ARGV[2] events the log keeps; per member i: ARGV[2i+1] owner, ARGV[2i+2] key
-- or session id (the sweep read the due members first; they are checked again here).
-- A session gets one EXPIRE event (key '', its session id): its whole context is gone.
-- Returns {EXPIRE events emitted, the set's earliest score left or false}.
local now = tonumber(ARGV[1])
namespace_keys(1, ARGV[2])
local ended = 0
for i = 1, (#KEYS - 5) / 3 do
  local owner, key = ARGV[2 * i + 1], ARGV[2 * i + 2]
  local score = redis.call('ZSCORE', NS.expiry, owner .. '/' .. key)
  if score and tonumber(score) <= now then
    if owner == '' then
      redis.call('DEL', KEYS[3 * i + 3], KEYS[3 * i + 4], KEYS[3 * i + 5])
      redis.call('ZREM', NS.expiry, '/' .. key)
      emit('E', '', '', now, key, nil, nil)
    else
      expire_due(KEYS[3 * i + 3], KEYS[3 * i + 4], KEYS[3 * i + 5], owner, key, now)
    end
    ended = ended + 1
  end
end
local left = earliest()
if left then return {ended, tostring(left)} end
return {ended, false}
