-- renew: extend the leases of a worker's jobs, all in one call.
--
-- KEYS[1] active
--
-- ARGV[1] prefix   ARGV[2] now   ARGV[3] maxlen (unused)
--         (the head: include/common.lua)
-- ARGV[4] token: the lease token   ARGV[5] lease_ms: the leases' new length
-- ARGV[6..] job_ids
--
-- Returns the ids whose lease this token no longer holds (recovered by
-- another worker after a lapse, or removed, or whose key now holds no
-- hash): the caller should stop reporting on them.
--!include common
local prefix, now, token, lease = ARGV[1], tonumber(ARGV[2]), ARGV[4], tonumber(ARGV[5])
local deadline = num(now + lease)
local lost = {}
for i = 6, #ARGV do
  local id = ARGV[i]
  local held = redis.pcall('HGET', prefix .. 'job:' .. id, 'token') == token
  if held and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
