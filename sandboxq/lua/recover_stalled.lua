-- recover_stalled: find leases whose deadline passed (their worker died or
-- lost Redis) and hand the jobs to another worker, counting each stall.
--
-- KEYS[1] active   KEYS[2] wait     KEYS[3] failed
-- KEYS[4] events   KEYS[5] marker   KEYS[6] cancelled
-- KEYS[7] cancel_requests   KEYS[8] given_up
--
-- ARGV[1] prefix   ARGV[2] now   ARGV[3] maxlen   (the head: include/common.lua)
-- ARGV[4] max_stalls   ARGV[5] limit: jobs per call
--
-- A job that stalled more than `max_stalls` times fails with the reason
-- "stalled N times" instead of looping forever (a poison job that kills its
-- worker). Otherwise it returns to `waiting` at its original place in line.
-- A job whose cancel was asked while it ran (include/cancel.lua) is
-- cancelled instead. Every worker runs this script from its start on, so it
-- also moves a hash an older version left under `cancelled` (see
-- claim_cancelled_key) out of the way of the state's set. A job whose hash
-- is gone is dropped; one whose key holds something other than a hash goes
-- to `failed` as it is (include/common.lua's quarantine). A `stalls` or
-- `attempts_made` that is not a count counts as 0.
--
-- Returns {requeued ids, failed ids, cancelled ids}.
--!include common
--!include moves
--!include retention
--!include flow
--!include dependents
--!include cancel
local prefix, now, maxlen = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local max_stalls, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local requeued, failed, cancelled = {}, {}, {}
claim_cancelled_key(KEYS[6], KEYS[8])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. num(now), 'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  local job_key = prefix .. 'job:' .. id
  redis.call('ZREM', KEYS[1], id)
  local kind = job_type(job_key)
  if kind ~= 'hash' and kind ~= 'none' then
    quarantine(prefix, id, now, KEYS[4], maxlen)
    failed[#failed + 1] = id
  elseif kind == 'hash' then
    leave_active(prefix, job_key)
    local stalls = hincr(job_key, 'stalls', 1)
    emit(KEYS[4], maxlen, 'stalled', id, 'stalls', stalls)
    local f = redis.call('HMGET', job_key, 'manual_retry_only', 'cancel_requested_at')
    local manual_only = f[1] == '1'
    if f[2] then
      cancel_for_good(prefix, job_key, id, now, maxlen, KEYS[6], KEYS[7], KEYS[4],
        'its worker was lost while it ran', '')
      cancelled[#cancelled + 1] = id
    elseif stalls > max_stalls or manual_only then
      local message = 'stalled ' .. stalls .. ' times'
      if manual_only then message = message .. ' (not retried: manual_retry_only)' end
      redis.call('HSET', job_key, 'error', message, 'traceback', '')
      hincr(job_key, 'attempts_made', 1)
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
return {requeued, failed, cancelled}
