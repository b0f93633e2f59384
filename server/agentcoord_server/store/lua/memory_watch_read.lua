-- One catch-up page of a namespace's working-memory events (MemoryStore.read_events).
-- KEYS[1] the event log, KEYS[2] the revision; ARGV[1] after (a revision), ARGV[2] most events.
-- Returns {current revision, {events after ARGV[1], oldest first}}: both read atomically, so a
-- page that does not start at after + 1 while after < current means the log was trimmed.
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
return {current, redis.call('XRANGE', KEYS[1], (tonumber(ARGV[1]) + 1) .. '-0', '+', 'COUNT',
                            ARGV[2])}
