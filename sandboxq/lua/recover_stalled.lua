-- recover_stalled: find leases whose deadline passed (their worker died or
-- lost Redis) and hand the jobs to another worker, counting each stall.
--
-- KEYS[1] active   KEYS[2] wait     KEYS[3] failed
-- KEYS[4] events   KEYS[5] marker
--
-- ARGV[1] key prefix   ARGV[2] now (ms)   ARGV[3] max stalls
-- ARGV[4] events maxlen   ARGV[5] limit (jobs per call)
--
-- A job that stalled more than `max stalls` times fails with the reason
-- "stalled N times" instead of looping forever (a poison job that kills its
-- worker). Otherwise it returns to `waiting` at its original place in line.
--
-- Returns {requeued ids, failed ids}.
--!include common
--!include retention
--!include flow
local prefix, now, max_stalls = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local maxlen, limit = ARGV[4], tonumber(ARGV[5])
local requeued, failed = {}, {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. num(now), 'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  local job_key = prefix .. 'job:' .. id
  redis.call('ZREM', KEYS[1], id)
  if redis.call('EXISTS', job_key) == 1 then
    leave_active(prefix, job_key)
    local stalls = redis.call('HINCRBY', job_key, 'stalls', 1)
    emit(KEYS[4], maxlen, 'stalled', id, 'stalls', stalls)
    local manual_only = redis.call('HGET', job_key, 'manual_retry_only') == '1'
    if stalls > max_stalls or manual_only then
      local message = 'stalled ' .. stalls .. ' times'
      if manual_only then message = message .. ' (not retried: manual_retry_only)' end
      redis.call('HSET', job_key, 'error', message, 'traceback', '')
      redis.call('HINCRBY', job_key, 'attempts_made', 1)
      notify_parent(job_key, now, maxlen, false, message)
      finalize(prefix, job_key, KEYS[3], id, 'failed', now, 'kf_count', 'kf_age', maxlen)
      emit(KEYS[4], maxlen, 'failed', id, 'error', message)
      failed[#failed + 1] = id
    else
      redis.call('HDEL', job_key, 'token')
      make_waiting(prefix, job_key, id, now, true)
      emit(KEYS[4], maxlen, 'waiting', id, 'from', 'stalled')
      requeued[#requeued + 1] = id
    end
  end
end
return {requeued, failed}
