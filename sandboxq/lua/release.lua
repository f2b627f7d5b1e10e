-- release: give a worker's unfinished jobs back to the queue at once (a forced
-- shutdown), instead of waiting for their leases to lapse. The jobs keep their
-- place in line and no attempt or stall is counted.
--
-- KEYS[1] active   KEYS[2] wait   KEYS[3] events   KEYS[4] marker
--
-- ARGV[1] key prefix   ARGV[2] lease token   ARGV[3] events maxlen
-- ARGV[4..] job ids
--
-- Returns the ids released (those still leased with this token).
--!include common
local prefix, token, maxlen = ARGV[1], ARGV[2], ARGV[3]
local released = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local job_key = prefix .. 'job:' .. id
  if redis.call('HGET', job_key, 'token') == token and redis.call('ZREM', KEYS[1], id) == 1 then
    local fields = redis.call('HMGET', job_key, 'priority', 'seq')
    redis.call('HDEL', job_key, 'token', 'started_at')
    make_waiting(job_key, KEYS[2], KEYS[4], id, fields[1] or '0', fields[2] or '0')
    emit(KEYS[3], maxlen, 'waiting', id, 'from', 'released')
    released[#released + 1] = id
  end
end
return released
