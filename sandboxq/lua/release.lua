-- release: give a worker's unfinished jobs back to the queue at once (a forced
-- shutdown), instead of waiting for their leases to lapse. The jobs keep their
-- place in line and no attempt or stall is counted.
--
-- KEYS[1] active   KEYS[2] wait   KEYS[3] events   KEYS[4] marker
--
-- ARGV[1] key prefix   ARGV[2] lease token   ARGV[3] events maxlen
-- ARGV[4] now (ms)   ARGV[5..] job ids
--
-- Returns the ids released (those still leased with this token).
--!include common
local prefix, token, maxlen, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local released = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local job_key = prefix .. 'job:' .. id
  if redis.call('HGET', job_key, 'token') == token and redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('HDEL', job_key, 'token', 'started_at')
    leave_active(prefix, job_key)
    make_waiting(prefix, job_key, id, now, true)
    emit(KEYS[3], maxlen, 'waiting', id, 'from', 'released')
    released[#released + 1] = id
  end
end
return released
