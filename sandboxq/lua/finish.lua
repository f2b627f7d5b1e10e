-- finish: settle a batch of leased jobs: complete, fail, or retry later.
--
-- KEYS[1] active    KEYS[2] wait     KEYS[3] delayed   KEYS[4] completed
-- KEYS[5] failed    KEYS[6] events   KEYS[7] seq       KEYS[8] marker
-- KEYS[9] cancelled   KEYS[10] cancel_requests
--
-- ARGV[1] prefix   ARGV[2] now   ARGV[3] maxlen   (the head: include/common.lua)
-- ARGV[4] token: the lease token   ARGV[5] start_count: how many starts follow
-- ARGV[6..] starts, outcomes:
-- starts, 2 values each: id, started (ms): prefetched jobs (fetch.lua) a
--   child took since, marked started (`started_at`, the `active` event)
--   before any job is settled, as they happened first; a job no longer
--   leased with this token is left alone
-- outcomes, 6 values each: id, outcome, value, traceback, delay_ms, lease
--   lease: the job's `leases` count when this worker fetched it (fetch.lua),
--   or "" (then a finish sent twice is not recognized)
--   outcome "completed":     value = result (JSON)
--   outcome "failed":        value = error message; spends an attempt and is
--                            retried after delay_ms while attempts remain
--   outcome "unrecoverable": value = error message; fails for good now
--   outcome "retry":         the handler asked to run again after delay_ms;
--                            no attempt is spent, `retries` counts it
--   outcome "ratelimited":   the handler hit a downstream rate limit: the
--                            job's group (or the queue) pauses for delay_ms
--                            and the job waits at its place; no attempt spent
--   outcome "cancelled":     the worker stopped the job (or never started it)
--                            for a cancel request: value = what became of
--                            the run; the job is cancelled for good
--   outcome "unstarted":     the worker never started the job (no handler
--                            for its name there, say) and puts it back: after
--                            delay_ms in delayed (event `delayed`), or at
--                            once in waiting at its place (event `waiting`,
--                            from "unstarted"); no attempt is spent and
--                            `retries` does not count it; value is unused
-- The caller computes delay_ms (backoff and jitter live in Python).
-- A job with manual_retry_only = "1" is never retried automatically: any
-- outcome but "completed" and "unstarted" fails it for good.
-- A job with a pending cancel request (include/cancel.lua) is never run
-- again: an outcome that would run it again (a failure with attempts left,
-- "retry", "ratelimited", "unstarted") cancels it instead. One that ends it
-- for good (completed, failed with no attempt left) stands, and the request
-- is dropped.
-- A job's stored fields may be garbage: a count that is not one (attempts_made,
-- retries) counts as 0, an `attempts` that is no number as 1; a job whose key
-- holds no hash is "lost" (recover_stalled.lua files it under `failed` once
-- its lease lapses).
--
-- Returns one status per job: "completed", "failed", "retrying",
-- "rate-limited", "cancelled", "unstarted", "settled:<status>" when this very
-- lease was settled before (the same finish sent again because its reply was
-- lost), or "lost" when the job is no longer leased with this token (its
-- lease expired and it was recovered, or it was removed). A lost or settled
-- job is left untouched.
--!include common
--!include moves
--!include retention
--!include flow
--!include dependents
--!include cancel
local prefix, now, maxlen, token = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local out = {}

local function mark_started(job_key, id, started)
  redis.call('HSET', job_key, 'started_at', started)
  emit(KEYS[6], maxlen, 'active', id)
end

-- The starts of jobs settled below are recorded with their settling (a
-- no-op job usually starts and ends between two calls): same result, fewer
-- writes.
local first_job = 6 + 2 * tonumber(ARGV[5])
local settling, late_starts = {}, {}
for i = first_job, #ARGV, 6 do settling[ARGV[i]] = true end
for i = 6, first_job - 1, 2 do
  local id = ARGV[i]
  local job_key = prefix .. 'job:' .. id
  if settling[id] then
    late_starts[id] = ARGV[i + 1]
  elseif redis.pcall('HGET', job_key, 'token') == token then  -- no hash: not ours
    mark_started(job_key, id, ARGV[i + 1])
  end
end

local function retry_later(job_key, id, delay)
  if delay > 0 then
    redis.call('ZADD', KEYS[3], num(now + delay), id)
    redis.call('HSET', job_key, 'state', 'delayed')
    -- Wake a blocked worker so it re-times its sleep to this job's due time.
    redis.call('ZADD', KEYS[8], 0, '0')
  else
    make_waiting(prefix, job_key, id, now, false)
  end
  redis.call('HDEL', job_key, 'token', 'started_at')
  emit(KEYS[6], maxlen, 'retrying', id, 'delay_ms', num(delay))
  if delay > 0 then emit(KEYS[6], maxlen, 'delayed', id, 'delay_ms', num(delay)) end
  return 'retrying'
end

-- The worker never started the job: back in line with nothing counted.
local function put_back(job_key, id, delay)
  redis.call('HDEL', job_key, 'token', 'started_at')
  if delay > 0 then
    redis.call('ZADD', KEYS[3], num(now + delay), id)
    redis.call('HSET', job_key, 'state', 'delayed')
    redis.call('ZADD', KEYS[8], 0, '0')
    emit(KEYS[6], maxlen, 'delayed', id, 'delay_ms', num(delay))
  else
    make_waiting(prefix, job_key, id, now, true)
    emit(KEYS[6], maxlen, 'waiting', id, 'from', 'unstarted')
  end
  return 'unstarted'
end
-- The handler hit a downstream limit: pause its scope (the job's group, else
-- the queue) for delay_ms, and put the job back at its place in line. No
-- attempt is spent.
local function rate_limited(job_key, id, delay, group)
  local until_ms = num(now + delay)
  if group then
    redis.call('ZREM', prefix .. 'groups', group)
    redis.call('ZADD', prefix .. 'group_paused', until_ms, group)
  else
    local current = stored_number(redis.call('HGET', prefix .. 'meta', 'rl_until'), 0)
    if now + delay > current then redis.call('HSET', prefix .. 'meta', 'rl_until', until_ms) end
  end
  redis.call('HDEL', job_key, 'token', 'started_at')
  make_waiting(prefix, job_key, id, now, true)
  emit(KEYS[6], maxlen, 'rate-limited', id, 'until_ms', until_ms, 'scope', group or '')
  return 'rate-limited'
end

local function cancel_now(job_key, id, detail, traceback)
  return cancel_for_good(prefix, job_key, id, now, maxlen, KEYS[9], KEYS[10], KEYS[6], detail,
    traceback)
end

local function fail_for_good(job_key, id, message)
  notify_parent(job_key, now, maxlen, false, message)
  finalize(prefix, job_key, KEYS[5], id, 'failed', now, 'kf_count', 'kf_age', maxlen)
  emit(KEYS[6], maxlen, 'failed', id, 'error', clip(message, EVENT_TEXT_BYTES))
  return 'failed'
end

for i = first_job, #ARGV, 6 do
  local id, outcome, value, traceback = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local delay, lease = tonumber(ARGV[i + 4]), ARGV[i + 5]
  local job_key = prefix .. 'job:' .. id
  local status
  -- What every outcome needs, in one read (a key that holds no hash has
  -- no token: lost). Each field is a scan of the job's hash: what only a
  -- failure or a retry needs is read there, not for every completed job.
  local f = redis.pcall('HMGET', job_key, 'token', 'group', 'manual_retry_only', 'parent_prefix',
    'settled', 'attempts_made', 'kc_count', 'kc_age', 'cancel_requested_at', 'dedupe_id',
    'awaited_as')
  if is_error(f) then f = {} end
  local held = f[1] == token and redis.call('ZREM', KEYS[1], id) == 1
  local cancelling = held and f[9]
  local started = held and late_starts[id]
  if outcome == 'unstarted' then
    started = nil  -- whatever a start said: the worker says it never ran
  elseif started and outcome ~= 'completed' then
    mark_started(job_key, id, started)
    started = nil
  end
  local recorded = false  -- `settled` written already
  if not held then
    status = 'lost'
    local settled = f[5]
    if lease ~= '' and settled and string.sub(settled, 1, #lease + 1) == lease .. ' ' then
      status = 'settled:' .. string.sub(settled, #lease + 2)
    end
  else
    leave_active(prefix, job_key, f[2])
  end
  local made = stored_count(f[6]) + 1  -- attempts_made, if this run counts
  local manual_only = status == nil and f[3] == '1' and outcome ~= 'completed'
  if status then
    -- lost: left untouched
  elseif outcome == 'cancelled' then
    -- A run that started counts as an attempt; a prefetched job the worker
    -- dropped before any child took it does not.
    if redis.call('HEXISTS', job_key, 'started_at') == 1 then
      redis.call('HSET', job_key, 'attempts_made', made)
    end
    status = cancel_now(job_key, id, value, '')
  elseif outcome == 'unstarted' then
    if cancelling then
      status = cancel_now(job_key, id, 'never started', '')
    else
      status = put_back(job_key, id, delay)
    end
  elseif manual_only then
    -- Never retried automatically (e.g. a charge): any unfinished run is a
    -- failure that only a person's retry can send back.
    local message = value
    if outcome == 'retry' or outcome == 'ratelimited' then
      message = value .. ' (not retried: manual_retry_only)'
    end
    redis.call('HSET', job_key, 'error', message, 'traceback', traceback, 'attempts_made', made)
    status = fail_for_good(job_key, id, message)
  elseif outcome == 'completed' then
    -- The plain job's path, kept short: one write, then filed in completed.
    local settle = {'HSET', job_key, 'result', value,
      'attempts_made', made, 'state', 'completed', 'finished_at', num(now)}
    if lease ~= '' then
      settle[#settle + 1] = 'settled'
      settle[#settle + 1] = lease .. ' completed'
      recorded = true
    end
    if started then
      settle[#settle + 1] = 'started_at'
      settle[#settle + 1] = started
    end
    redis.call(unpack(settle))
    if started then emit(KEYS[6], maxlen, 'active', id) end
    if f[4] then notify_parent(job_key, now, maxlen, true, value) end
    file_finished(prefix, job_key, KEYS[4], id, now, 'kc_count', 'kc_age', maxlen,
      {f[7], f[8], f[10], f[11]}, true)
    -- The result travels in the event when small; a follower reads a big
    -- one from the job (`result_bytes` says how big it is).
    if #value <= EVENT_RESULT_BYTES then
      emit(KEYS[6], maxlen, 'completed', id, 'result', value)
    else
      emit(KEYS[6], maxlen, 'completed', id, 'result_bytes', #value)
    end
    status = 'completed'
  elseif cancelling and (outcome == 'retry' or outcome == 'ratelimited') then
    status = cancel_now(job_key, id, 'not run again: ' .. clip(value, EVENT_TEXT_BYTES), '')
  elseif outcome == 'retry' then
    redis.call('HSET', job_key, 'retries', stored_count(redis.call('HGET', job_key, 'retries')) + 1)
    status = retry_later(job_key, id, delay)
  elseif outcome == 'ratelimited' then
    status = rate_limited(job_key, id, delay, f[2])
  else
    redis.call('HSET', job_key, 'error', value, 'traceback', traceback, 'attempts_made', made)
    local allowed = stored_number(redis.call('HGET', job_key, 'attempts'), 1)
    if outcome == 'failed' and made < allowed and cancelling then
      status = cancel_now(job_key, id, 'not retried: ' .. clip(value, EVENT_TEXT_BYTES), traceback)
    elseif outcome == 'failed' and made < allowed then
      status = retry_later(job_key, id, delay)
    else
      status = fail_for_good(job_key, id, value)
    end
  end
  if cancelling and status ~= 'cancelled' then drop_cancel_request(job_key, id, KEYS[10]) end
  -- Remember which lease was settled, and how, for a finish sent again (the
  -- job may be gone already: retention can delete it as it finishes).
  if held and lease ~= '' and not recorded and redis.call('EXISTS', job_key) == 1 then
    redis.call('HSET', job_key, 'settled', lease .. ' ' .. status)
  end
  out[#out + 1] = status
end
flush_trims()
return out
