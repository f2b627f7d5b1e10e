-- Moving a job between states: into waiting, out of it, out of active,
-- back from a worker; quarantining a record no script can read; the audit
-- trail of a person's action. Split from common.lua so that a script that
-- only adds jobs (add.lua, the hottest) does not define them on every call.
-- Needs: common.

-- Put a job into waiting (its group's set, or the queue's) and wake one
-- blocked worker. keep_place: requeue at its original place in line (a
-- stalled or released job), else join the end of its priority (so does a
-- job whose stored place is not a number). Returns false, doing nothing,
-- when the job's key holds something other than a hash (see quarantine).
local function make_waiting(prefix, job_key, id, now, keep_place)
  local f = redis.pcall('HMGET', job_key, 'priority', 'seq', 'waiting_since', 'group')
  if is_error(f) then return false end
  local seq, since = f[2], f[3]
  if not keep_place or not stored_number(seq, nil) or not stored_number(since, nil) then
    seq, since = next_seq(prefix .. 'seq'), num(now)
    redis.call('HSET', job_key, 'seq', seq, 'waiting_since', since)
  end
  enter_wait(prefix, id, wait_score(prefix, f[1], seq, since), f[4])
  redis.call('HSET', job_key, 'state', 'waiting')
  redis.call('ZADD', prefix .. 'marker', 0, '0')
  return true
end

-- A job id whose key holds something other than a hash (another tool wrote
-- it there): no script can read, run or settle it. The caller took it out
-- of the set it was found in; it goes to `failed`, with a `failed` event,
-- so a person sees it (and can remove it) instead of it vanishing. Its key
-- is left as it is.
local function quarantine(prefix, id, now, events_key, maxlen)
  redis.call('ZADD', prefix .. 'failed', num(now), id)
  emit(events_key, maxlen, 'failed', id, 'error', 'corrupt record: its key holds no hash')
end

-- Whether a job's key is a hash ("hash"), missing ("none"), or something
-- else: for the scripts that touch a job by id outside the hot paths.
local function job_type(job_key)
  return redis.call('TYPE', job_key).ok
end

-- Take a job out of whichever waiting set holds it; true if it was waiting.
local function unwait(prefix, job_key, id)
  local group = redis.call('HGET', job_key, 'group')
  if group then
    local removed = redis.call('ZREM', prefix .. 'gwait:' .. group, id) == 1
    if removed then incr(prefix .. 'gcount', -1) end
    return removed
  end
  return redis.call('ZREM', prefix .. 'wait', id) == 1
end

local concurrency_cache = {}

-- A job left `active` (finished, released or stalled): free its group's
-- concurrency slot, and wake a blocked worker when a concurrency cap may
-- have been what kept jobs waiting. `group`: the job's group field if the
-- caller read it already (false: none), else nil.
local function leave_active(prefix, job_key, group)
  if group == nil then group = redis.call('HGET', job_key, 'group') end
  if group then
    if hincr(prefix .. 'group_active', group, -1) <= 0 then
      redis.call('HDEL', prefix .. 'group_active', group)
    end
    if redis.call('ZCARD', prefix .. 'gwait:' .. group) > 0 then ready_group(prefix, group) end
  end
  local limited = concurrency_cache[prefix]
  if limited == nil then  -- read once per script run: meta does not change meanwhile
    limited = redis.call('HEXISTS', prefix .. 'meta', 'concurrency') == 1
    concurrency_cache[prefix] = limited
  end
  if group or limited then
    redis.call('ZADD', prefix .. 'marker', 0, '0')
  end
end

-- Give a leased job back to waiting at its original place, counting no
-- attempt and no stall: it was released by its worker, or never reached it.
-- The caller has taken it out of `active`.
local function give_back(prefix, job_key, id, now, events_key, maxlen, from)
  leave_active(prefix, job_key)
  redis.call('HDEL', job_key, 'token', 'started_at')
  make_waiting(prefix, job_key, id, now, true)
  emit(events_key, maxlen, 'waiting', id, 'from', from)
end

-- Record a manual action (retry, removal, promotion, pause...) by a person:
-- on the job (audit:<id>, removed with it) and in the queue's capped audit
-- log, which outlives removed jobs. job_id "" means the queue itself.
local function audit(prefix, job_id, now, by, action)
  local at = num(now)
  if job_id ~= '' then  -- (an audit key that holds no list keeps the stream's entry only)
    redis.pcall('RPUSH', prefix .. 'audit:' .. job_id,
      cjson.encode({at = tonumber(at) / 1000, by = by, action = action}))
  end
  redis.call('XADD', prefix .. 'audit', 'MAXLEN', '~', 10000, '*',
    'job_id', job_id, 'by', by, 'action', action, 'at', at)
end
