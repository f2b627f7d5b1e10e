-- Retention: drop the oldest finished jobs of one set (completed or failed)
-- beyond a count and/or an age. A negative value means "no bound".
-- Needs: common, and flow after it, dependents after it (script_call.py
-- checks every include's Needs line against the includes of each script).

-- Set by flow.lua: a deleted job that a flow parent still waits for counts
-- as a failed child, so the parent never waits forever.
local on_job_deleted
-- Set by dependents.lua: a job that other jobs await (its `awaited_as`
-- field) tells them it finished, or was deleted unfinished.
local settle_dependents

-- A job that finishes or is deleted releases its dedupe window
-- (include/add_jobs.lua) if the window is its own and has no ttl, so a
-- dedupe id leaves no key behind; a window with a ttl lasts its ttl
-- whatever becomes of the job (unless `even_with_ttl`: the queue goes).
-- `dedupe_id`: the job's field as read (anything but text: none).
local function release_dedupe(prefix, id, dedupe_id, even_with_ttl)
  if type(dedupe_id) ~= 'string' then return end
  local key = prefix .. 'dedupe:' .. dedupe_id
  if redis.pcall('GET', key) == id and (even_with_ttl or redis.call('PTTL', key) == -1) then
    redis.call('DEL', key)
  end
end

local function delete_job(prefix, id, now, maxlen)
  local job_key = prefix .. 'job:' .. id
  on_job_deleted(prefix, id, now, maxlen)
  local f = redis.pcall('HMGET', job_key, 'dedupe_id', 'awaited_as')
  if is_error(f) then f = {} end
  -- (a finished job told its dependents as it finished: no `awaited_as` left)
  if f[2] then settle_dependents(prefix, id, job_key, now, maxlen, true) end
  release_dedupe(prefix, id, f[1])
  redis.call('DEL', job_key, prefix .. 'logs:' .. id,
    prefix .. 'deps:' .. id, prefix .. 'ignored:' .. id, prefix .. 'audit:' .. id,
    prefix .. 'children:' .. id, prefix .. 'awaits:' .. id, prefix .. 'dependents:' .. id)
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

-- A batch that files many jobs into one finished set (finish.lua) trims
-- once for a run of jobs with the same retention: per set, the run's
-- retention waits here until a job with another one is filed into that
-- set, or the script ends (flush_trims). Keeping the newest N, or those
-- younger than an age at one `now`, ends the same whether trimmed after
-- each job or once after the run.
local deferred_trims, deferred_order = {}, {}

local function trim_deferred(set_key)
  local t = deferred_trims[set_key]
  if t then
    deferred_trims[set_key] = nil
    trim_finished(t.prefix, set_key, t.now, t.count, t.age, 1000, t.maxlen)
  end
end

-- Apply every deferred trim, in the order their sets were first filed.
local function flush_trims()
  for _, set_key in ipairs(deferred_order) do trim_deferred(set_key) end
  deferred_order = {}
end

-- Put a job whose state and finished_at are written into its finished set
-- (completed or failed), then apply the job's own retention for that set:
-- at once, or with `defer` once for its run (the caller then calls
-- flush_trims before it returns). `count_field` and `age_field` name the
-- job's count/age fields; `keep`, their values and its dedupe_id if the
-- caller read them, then its awaited_as. A finished job releases its dedupe
-- window, and tells the jobs that await it (before retention may delete it).
local function file_finished(prefix, job_key, set_key, id, now, count_field, age_field, maxlen,
    keep, defer)
  redis.call('HDEL', job_key, 'token')
  keep = keep or redis.call('HMGET', job_key, count_field, age_field, 'dedupe_id', 'awaited_as')
  release_dedupe(prefix, id, keep[3])
  if keep[4] then settle_dependents(prefix, id, job_key, now, maxlen, false) end
  -- Stored on the job: one that is not a count or a number keeps all.
  local max_count = stored_integer(keep[1], -1)
  local max_age_ms = stored_integer(keep[2], -1)
  local t = deferred_trims[set_key]
  if t and (not defer or t.count ~= max_count or t.age ~= max_age_ms or t.now ~= now) then
    trim_deferred(set_key)  -- a run ends: trim for it before this job enters
    t = nil
  end
  redis.call('ZADD', set_key, num(now), id)
  if max_count < 0 and max_age_ms < 0 then return end
  if not defer then
    trim_finished(prefix, set_key, now, max_count, max_age_ms, 1000, maxlen)
  elseif not t then
    deferred_trims[set_key] = {prefix = prefix, now = now, count = max_count, age = max_age_ms,
      maxlen = maxlen}
    deferred_order[#deferred_order + 1] = set_key
  end
end

-- Move a job into a finished set: its state and finish time, then the set.
local function finalize(prefix, job_key, set_key, id, state, now, count_field, age_field, maxlen)
  redis.call('HSET', job_key, 'state', state, 'finished_at', num(now))
  file_finished(prefix, job_key, set_key, id, now, count_field, age_field, maxlen)
end
