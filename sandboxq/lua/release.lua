-- release: give a worker's unfinished jobs back to the queue at once (a forced
-- shutdown), instead of waiting for their leases to lapse. The jobs keep their
-- place in line and no attempt or stall is counted. A manual_retry_only job
-- fails instead: it may have half-run. A job whose cancel was asked
-- (include/cancel.lua) is cancelled instead of handed back.
--
-- KEYS[1] active   KEYS[2] wait   KEYS[3] events   KEYS[4] marker
-- KEYS[5] cancelled   KEYS[6] cancel_requests
--
-- ARGV[1] key prefix   ARGV[2] lease token   ARGV[3] events maxlen
-- ARGV[4] now (ms)   ARGV[5..] job ids
--
-- Returns the ids released (those still leased with this token).
--!include common
--!include retention
--!include flow
--!include cancel
local prefix, token, maxlen, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local released = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local job_key = prefix .. 'job:' .. id
  if redis.call('HGET', job_key, 'token') == token and redis.call('ZREM', KEYS[1], id) == 1 then
    local f = redis.call('HMGET', job_key, 'manual_retry_only', 'cancel_requested_at')
    if f[2] then
      leave_active(prefix, job_key)
      cancel_for_good(prefix, job_key, id, now, maxlen, KEYS[5], KEYS[6], KEYS[3],
        'its worker let go of it', '')
    elseif f[1] == '1' then
      leave_active(prefix, job_key)
      -- It may have half-run (a charge): only a person may send it back.
      local message = 'interrupted by a forced shutdown (not retried: manual_retry_only)'
      redis.call('HSET', job_key, 'error', message, 'traceback', '')
      redis.call('HINCRBY', job_key, 'attempts_made', 1)
      notify_parent(job_key, now, maxlen, false, message)
      finalize(prefix, job_key, prefix .. 'failed', id, 'failed', now, 'kf_count', 'kf_age', maxlen)
      emit(KEYS[3], maxlen, 'failed', id, 'error', message)
    else
      give_back(prefix, job_key, id, now, KEYS[3], maxlen, 'released')
      released[#released + 1] = id
    end
  end
end
return released
