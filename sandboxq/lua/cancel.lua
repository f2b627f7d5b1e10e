-- cancel: stop one job for good, at a person's request. Never retried.
--
-- KEYS[1] wait   KEYS[2] delayed   KEYS[3] active   KEYS[4] waiting-children
-- KEYS[5] cancelled   KEYS[6] cancel_requests   KEYS[7] events
-- KEYS[8] given_up (where an old version's hash named `cancelled` moves)
--
-- ARGV[1] key prefix   ARGV[2] events maxlen   ARGV[3] job id
-- ARGV[4] now (ms)   ARGV[5] who asked   ARGV[6] why ("" = not said)
--
-- A waiting, delayed or waiting-children job moves to `cancelled` now (a
-- flow parent counts it as a child that failed for good). An active job
-- gets a request (include/cancel.lua): the worker holding it stops its
-- processes (SIGTERM, then SIGKILL after its kill grace) and settles it as
-- cancelled; if that worker died, stalled recovery does. Both are audited
-- (the job's audit list and the queue's audit stream) with the reason.
--
-- Returns "cancelled", "cancelling" (active: its worker will stop it; also
-- when it was asked before), "finished:<state>" when there is nothing to
-- cancel (completed, failed, cancelled), "missing" when there is no such
-- job, or "corrupt" when its key holds something other than a hash (remove
-- it instead). Nothing is written (nor audited) in the last three cases.
--!include common
--!include retention
--!include flow
--!include cancel
local prefix, maxlen, id, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local by, reason = ARGV[5], clip(ARGV[6], EVENT_TEXT_BYTES)
local job_key = prefix .. 'job:' .. id
local kind = job_type(job_key)
if kind == 'none' then return 'missing' end
if kind ~= 'hash' then return 'corrupt' end
claim_cancelled_key(KEYS[5], KEYS[8])
local why = ''
if reason ~= '' then why = ': ' .. reason end

if redis.call('ZSCORE', KEYS[3], id) then
  if redis.call('HEXISTS', job_key, 'cancel_requested_at') == 1 then return 'cancelling' end
  redis.call('HSET', job_key, 'cancel_requested_at', num(now), 'cancelled_by', by,
    'cancel_reason', reason)
  redis.call('ZADD', KEYS[6], num(now), id)
  audit(prefix, id, now, by, 'cancel requested' .. why)
  emit(KEYS[7], maxlen, 'cancel-requested', id, 'by', by, 'reason', reason)
  return 'cancelling'
end

local state = redis.call('HGET', job_key, 'state')
if state == 'waiting' then
  unwait(prefix, job_key, id)
elseif state == 'delayed' then
  redis.call('ZREM', KEYS[2], id)
elseif state == 'waiting-children' then
  redis.call('ZREM', KEYS[4], id)
else
  return 'finished:' .. (state or '')
end
redis.call('HSET', job_key, 'cancelled_by', by, 'cancel_reason', reason)
audit(prefix, id, now, by, 'cancel' .. why)
return cancel_for_good(prefix, job_key, id, now, maxlen, KEYS[5], KEYS[6], KEYS[7], '', '')
