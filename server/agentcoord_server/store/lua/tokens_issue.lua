-- Writes a token's namespace record and index entry, unless the namespace may not get tokens.
-- KEYS[1]  the namespace's registry record, "ac:{ns}:namespace" (hash with a "state" field)
-- KEYS[2]  the token's record, "ac:{ns}:tokens:<token id>"
-- KEYS[3]  the namespace's token index, "ac:{ns}:tokens:index"
-- ARGV[1]  "1": the namespace must be registered and active (the OPERATOR issues);
--          "0": an unregistered namespace is fine too (a STEWARD issues in its own team)
-- ARGV[2]  expiry, Unix ms ("0": never)
-- ARGV[3]  the token id
-- ARGV[4]  the server's default token quota (0: none); the record's "quota:tokens" overrides it
-- ARGV[5…] field, value, … of the record
-- Returns  {"ok"}, {"missing"} (not registered, ARGV[1] "1"), {"deleting"} (DeleteNamespace
-- began) or {"quota", limit, used} (as many live tokens as the quota allows; nothing written):
-- checked in the same script as the write, so a deletion that marked the namespace first can
-- never miss a token issued after the mark.
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'deleting' then
  return {'deleting'}
end
if not state and ARGV[1] == '1' then
  return {'missing'}
end
local limit = tonumber(redis.call('HGET', KEYS[1], 'quota:tokens') or '0')
if limit == 0 then
  limit = tonumber(ARGV[4])
end
if limit > 0 then
  local used = redis.call('ZCARD', KEYS[3])
  if used >= limit then
    return {'quota', limit, used}
  end
end
local fields = {}
for i = 5, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('ZADD', KEYS[3], 0, ARGV[3])
if ARGV[2] ~= '0' then
  redis.call('PEXPIREAT', KEYS[2], ARGV[2])
end
return {'ok'}
