-- Cancellation (cancel.lua): a person stops a job for good. A job that is
-- not running is cancelled at once. An active job keeps a *request*: the
-- fields cancel_requested_at, cancelled_by and cancel_reason on its hash, and
-- its id in the queue's `cancel_requests` zset, which the worker holding it
-- reads every half second; that worker stops it and settles it as
-- `cancelled`. Every script that settles or gives back a leased job honours
-- a request still pending: finish (any outcome that would run the job
-- again), recover_stalled, hand_back and reclaim.
-- Needs: common, retention and flow.

-- The job's error once cancelled: who asked, why, and what became of the
-- run; then who and why on their own.
local function cancel_message(job_key, detail)
  local f = redis.call('HMGET', job_key, 'cancelled_by', 'cancel_reason')
  local by, reason = f[1] or '', f[2] or ''
  local message = 'cancelled'
  if by ~= '' then message = message .. ' by ' .. by end
  if reason ~= '' then message = message .. ': ' .. reason end
  if detail and detail ~= '' then message = message .. ' (' .. detail .. ')' end
  return message, by, reason
end

-- Move a job that no set holds any more (the caller took it out of waiting,
-- delayed, active...) into `cancelled`: its error says who asked and why
-- (`detail`: what became of its run, or ""), a flow parent counts it as a
-- child that failed for good, and the job's keep_failed retention applies.
-- `traceback`: what to keep in the job's traceback ("" for none).
local function cancel_for_good(prefix, job_key, id, now, maxlen, cancelled_key, requests_key,
    events_key, detail, traceback)
  local message, by, reason = cancel_message(job_key, detail)
  redis.call('ZREM', requests_key, id)
  redis.call('HDEL', job_key, 'cancel_requested_at')
  redis.call('HSET', job_key, 'error', message, 'traceback', traceback or '')
  notify_parent(job_key, now, maxlen, false, message)
  finalize(prefix, job_key, cancelled_key, id, 'cancelled', now, 'kf_count', 'kf_age', maxlen)
  emit(events_key, maxlen, 'cancelled', id, 'by', by, 'reason', clip(reason, EVENT_TEXT_BYTES))
  return 'cancelled'
end

-- The job ended for good before its pending cancel took effect (it
-- completed, or failed with nothing left to retry): that outcome stands,
-- and the request is forgotten. Its audit entry stays.
local function drop_cancel_request(job_key, id, requests_key)
  redis.call('ZREM', requests_key, id)
  if redis.call('EXISTS', job_key) == 1 then  -- retention may have deleted it
    redis.call('HDEL', job_key, 'cancel_requested_at', 'cancelled_by', 'cancel_reason')
  end
end

-- Before `cancelled` named the state's set, it named a hash of the fetch
-- requests workers gave up on (now `given_up`, see reclaim.lua). A hash a
-- worker of that version left behind moves there, so the set can be made.
local function claim_cancelled_key(cancelled_key, given_up_key)
  if redis.call('TYPE', cancelled_key).ok ~= 'hash' then return end
  local marks = redis.call('HGETALL', cancelled_key)
  for i = 1, #marks, 2 do redis.call('HSETNX', given_up_key, marks[i], marks[i + 1]) end
  redis.call('DEL', cancelled_key)
end
