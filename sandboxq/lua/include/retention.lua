-- Retention: drop the oldest finished jobs of one set (completed or failed)
-- beyond a count and/or an age. A negative value means "no bound".
-- Needs: common, and flow after it (script_call.py checks every include's
-- Needs line against the includes of each script).

-- Set by flow.lua: a deleted job that a flow parent still waits for counts
-- as a failed child, so the parent never waits forever.
local on_job_deleted

local function delete_job(prefix, id, now, maxlen)
  on_job_deleted(prefix, id, now, maxlen)
  redis.call('DEL', prefix .. 'job:' .. id, prefix .. 'logs:' .. id,
    prefix .. 'deps:' .. id, prefix .. 'ignored:' .. id, prefix .. 'audit:' .. id,
    prefix .. 'children:' .. id)
end

-- Returns the number of jobs removed; never more than `limit` per call so a
-- huge backlog cannot block Redis for long.
local function trim_finished(prefix, set_key, now, max_count, max_age_ms, limit, maxlen)
  local removed = 0
  if max_age_ms >= 0 then
    local old = redis.call('ZRANGEBYSCORE', set_key, '-inf', num(now - max_age_ms),
      'LIMIT', 0, limit)
    for _, id in ipairs(old) do
      redis.call('ZREM', set_key, id)
      delete_job(prefix, id, now, maxlen)
      removed = removed + 1
    end
  end
  if max_count >= 0 and removed < limit then
    local excess = redis.call('ZCARD', set_key) - max_count
    if excess > 0 then
      if excess > limit - removed then excess = limit - removed end
      local ids = redis.call('ZRANGE', set_key, 0, excess - 1)
      redis.call('ZREMRANGEBYRANK', set_key, 0, excess - 1)
      for _, id in ipairs(ids) do
        delete_job(prefix, id, now, maxlen)
      end
      removed = removed + #ids
    end
  end
  return removed
end

-- Put a job whose state and finished_at are written into its finished set
-- (completed or failed), then apply the job's own retention for that set.
-- `count_field` and `age_field` name the job's count/age fields; `keep`,
-- their values if the caller read them already.
local function file_finished(prefix, job_key, set_key, id, now, count_field, age_field, maxlen,
    keep)
  redis.call('HDEL', job_key, 'token')
  redis.call('ZADD', set_key, num(now), id)
  keep = keep or redis.call('HMGET', job_key, count_field, age_field)
  -- Stored on the job: one that is not a count or a number keeps all.
  local max_count = stored_integer(keep[1], -1)
  local max_age_ms = stored_integer(keep[2], -1)
  if max_count >= 0 or max_age_ms >= 0 then
    trim_finished(prefix, set_key, now, max_count, max_age_ms, 1000, maxlen)
  end
end

-- Move a job into a finished set: its state and finish time, then the set.
local function finalize(prefix, job_key, set_key, id, state, now, count_field, age_field, maxlen)
  redis.call('HSET', job_key, 'state', state, 'finished_at', num(now))
  file_finished(prefix, job_key, set_key, id, now, count_field, age_field, maxlen)
end
