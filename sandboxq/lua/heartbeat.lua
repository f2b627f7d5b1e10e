-- heartbeat: a worker parent says it is alive, and trims workers that died.
--
-- KEYS[1] the worker registry (hash: token -> JSON description whose
--         last_seen is in seconds)
--
-- ARGV[1] token   ARGV[2] description (JSON)   ARGV[3] now (ms)
-- ARGV[4] a worker not seen for this long is gone (ms)
-- ARGV[5] how many random entries to look at
--
-- Every live worker beats at least every 15 s, and each beat looks at a few
-- random entries and deletes those gone stale (or unreadable). So dead
-- workers leave the registry within a few beats of the fleet, even if
-- nobody ever lists it, at a constant cost per beat.
--
-- Returns how many entries were deleted.
local now, stale = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local sample = redis.call('HRANDFIELD', KEYS[1], tonumber(ARGV[5]), 'WITHVALUES')
local deleted = 0
for i = 1, #sample, 2 do
  local ok, entry = pcall(cjson.decode, sample[i + 1])
  local seen = ok and type(entry) == 'table' and tonumber(entry.last_seen)
  -- not (... <= stale): a NaN time is stale too
  if not seen or not (now - seen * 1000 <= stale) then
    redis.call('HDEL', KEYS[1], sample[i])
    deleted = deleted + 1
  end
end
return deleted
