-- hand_back: give a worker's unfinished jobs back to the queue at once, instead
-- of waiting for their leases to lapse. Two kinds:
-- - jobs that never ran (prefetched, and no child took them): each goes back
--   to waiting at its place, with no attempt and no stall counted, whatever
--   its options (manual_retry_only too: nothing ran);
-- - jobs that may have run (a forced shutdown interrupted them): they go back
--   the same way, except a manual_retry_only job, which fails instead: it
--   may have half-run, and only a person may send it back.
-- A job whose cancel was asked (include/cancel.lua) is cancelled instead of
-- handed back, whichever kind. A job no longer leased with this token (or
-- whose key holds no hash) is left alone.
--
-- KEYS[1] active   KEYS[2] wait   KEYS[3] events   KEYS[4] marker
-- KEYS[5] cancelled   KEYS[6] cancel_requests
--
-- ARGV[1] prefix   ARGV[2] now   ARGV[3] maxlen   (the head: include/common.lua)
-- ARGV[4] token: the lease token
-- ARGV[5] unstarted_count: how many of the ids that follow never ran
-- ARGV[6..] unstarted, interrupted: the ids that never ran, then those that
--           may have run
--
-- Returns the ids handed back to waiting (those still leased with this
-- token, neither cancelled nor failed).
--!include common
--!include moves
--!include retention
--!include flow
--!include dependents
--!include cancel
--!include hand_back_one
local prefix, now, maxlen, token = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local last_unstarted = 5 + tonumber(ARGV[5])
local released = {}
for i = 6, #ARGV do
  local id = ARGV[i]
  local job_key = prefix .. 'job:' .. id
  local may_have_run = i > last_unstarted
  if redis.pcall('HGET', job_key, 'token') == token and redis.call('ZREM', KEYS[1], id) == 1 then
    local f = redis.call('HMGET', job_key, 'manual_retry_only', 'cancel_requested_at')
    if may_have_run and f[1] == '1' and not f[2] then
      leave_active(prefix, job_key)
      -- It may have half-run (a charge): only a person may send it back. (A
      -- pending cancel wins: hand_back_one below cancels the job instead.)
      local message = 'interrupted by a forced shutdown (not retried: manual_retry_only)'
      redis.call('HSET', job_key, 'error', message, 'traceback', '')
      hincr(job_key, 'attempts_made', 1)
      notify_parent(job_key, now, maxlen, false, message)
      finalize(prefix, job_key, prefix .. 'failed', id, 'failed', now, 'kf_count', 'kf_age', maxlen)
      emit(KEYS[3], maxlen, 'failed', id, 'error', message)
    else
      local detail = may_have_run and 'its worker let go of it' or 'never started'
      if hand_back_one(prefix, job_key, id, now, maxlen, f[2], KEYS[5], KEYS[6], KEYS[3], detail,
          'released') then
        released[#released + 1] = id
      end
    end
  end
end
return released
