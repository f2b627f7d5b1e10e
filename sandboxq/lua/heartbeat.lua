-- heartbeat: a worker parent says it is alive, and trims workers that died.
--
-- KEYS[1] registry_key: the worker registry (hash: token -> JSON
--         description whose last_seen is in seconds)
--
-- ARGV[1] prefix (unused)   ARGV[2] now   ARGV[3] maxlen (unused)
--         (the head: include/common.lua; the registry belongs to no queue)
-- ARGV[4] token   ARGV[5] description: JSON
-- ARGV[6] stale_ms: a worker not seen for this long is gone
-- ARGV[7] sample: how many random entries to look at
--
-- Every live worker beats at least every 15 s, and each beat looks at a few
-- random entries and deletes those gone stale (or unreadable). So dead
-- workers leave the registry within a few beats of the fleet, even if
-- nobody ever lists it, at a constant cost per beat.
--
-- Returns how many entries were deleted.
local now, stale = tonumber(ARGV[2]), tonumber(ARGV[6])
redis.call('HSET', KEYS[1], ARGV[4], ARGV[5])
local sample = redis.call('HRANDFIELD', KEYS[1], tonumber(ARGV[7]), 'WITHVALUES')
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
