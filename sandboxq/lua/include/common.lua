-- Shared helpers, inlined into every script by scripts.py (`--!include common`).
-- Key names below are built from the queue's hash-tagged prefix only.

-- Redis formats Lua numbers passed to redis.call with "%.14g" (6.2: "%.17g"),
-- which can round large scores and millisecond timestamps. Every number that
-- becomes a score or a stored integer goes through num() instead.
-- A script formats the same `now` many times (a batch stamps every job with
-- it), and string.format is one of the dearer calls in Redis's Lua: the last
-- result is remembered.
local num_in, num_out
local function num(x)
  if x ~= num_in then num_in, num_out = x, string.format('%.0f', x) end
  return num_out
end

local function next_seq(seq_key)
  return redis.call('INCR', seq_key)
end

-- Waiting jobs are ordered by priority (lower first), then FIFO. Strict
-- priority: score = priority * 2^32 + seq. With priority aging on (meta field
-- aging_ms = milliseconds per priority level), score = priority * aging_ms +
-- the time the job started waiting, so a job's effective priority improves by
-- one level per aging_ms it waits and low priorities cannot starve.
local SEQ_SPAN = 4294967296
local aging_cache = {}

local function aging_ms(prefix)
  local cached = aging_cache[prefix]
  if cached == nil then
    cached = tonumber(redis.call('HGET', prefix .. 'meta', 'aging_ms') or '0')
    aging_cache[prefix] = cached
  end
  return cached
end

local function wait_score(prefix, priority, seq, since)
  local aging = aging_ms(prefix)
  if aging > 0 then
    return num(tonumber(priority) * aging + tonumber(since))
  end
  return num(tonumber(priority) * SEQ_SPAN + (tonumber(seq) % SEQ_SPAN))
end

-- At most `limit` bytes of `text`, cut on a UTF-8 character boundary, with a
-- marker giving the original size. Events copy error messages with it, so
-- the capped stream stays small (sandboxq/caps.py caps the stored text).
local EVENT_TEXT_BYTES = 1024
-- A completed event carries the job's result (JSON) up to this size.
local EVENT_RESULT_BYTES = 4096
local function clip(text, limit)
  if #text <= limit then return text end
  local cut = limit
  -- Back off over continuation bytes (10xxxxxx) to a character's start.
  while cut > 0 and string.byte(text, cut + 1) and string.byte(text, cut + 1) >= 128
      and string.byte(text, cut + 1) < 192 do
    cut = cut - 1
  end
  return string.sub(text, 1, cut) .. ' …[truncated: ' .. #text .. ' bytes in all]'
end

-- Append one lifecycle event to the queue's capped stream.
local function emit(events_key, maxlen, event, job_id, ...)
  redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*',
    'event', event, 'job_id', job_id, ...)
end

-- Groups: a grouped job waits in its group's own set (gwait:<group>); the
-- groups with ready jobs take turns in `groups` (score = a round-robin
-- counter), unless paused by a rate limit (`group_paused`, score = until).
-- `group_names` remembers every group, for drain and rescoring.
local function ready_group(prefix, group)
  if redis.call('ZSCORE', prefix .. 'group_paused', group) then return end
  if redis.call('ZSCORE', prefix .. 'groups', group) then return end
  redis.call('ZADD', prefix .. 'groups', redis.call('INCR', prefix .. 'group_rr'), group)
end

-- Put a job id into its waiting set: its group's (`group`, or false), or
-- the queue's. The caller sets its state and wakes a worker.
local function enter_wait(prefix, id, score, group)
  if group then
    redis.call('SADD', prefix .. 'group_names', group)
    redis.call('INCR', prefix .. 'gcount')
    redis.call('ZADD', prefix .. 'gwait:' .. group, score, id)
    ready_group(prefix, group)
  else
    redis.call('ZADD', prefix .. 'wait', score, id)
  end
end

-- Put a job into waiting (its group's set, or the queue's) and wake one
-- blocked worker. keep_place: requeue at its original place in line (a
-- stalled or released job), else join the end of its priority.
local function make_waiting(prefix, job_key, id, now, keep_place)
  local f = redis.call('HMGET', job_key, 'priority', 'seq', 'waiting_since', 'group')
  local seq, since = f[2], f[3]
  if not keep_place or not seq or not since then
    seq, since = next_seq(prefix .. 'seq'), num(now)
    redis.call('HSET', job_key, 'seq', seq, 'waiting_since', since)
  end
  enter_wait(prefix, id, wait_score(prefix, f[1] or '0', seq, since), f[4])
  redis.call('HSET', job_key, 'state', 'waiting')
  redis.call('ZADD', prefix .. 'marker', 0, '0')
end

-- Take a job out of whichever waiting set holds it; true if it was waiting.
local function unwait(prefix, job_key, id)
  local group = redis.call('HGET', job_key, 'group')
  if group then
    local removed = redis.call('ZREM', prefix .. 'gwait:' .. group, id) == 1
    if removed then redis.call('DECR', prefix .. 'gcount') end
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
    if redis.call('HINCRBY', prefix .. 'group_active', group, -1) <= 0 then
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
  if job_id ~= '' then
    redis.call('RPUSH', prefix .. 'audit:' .. job_id,
      cjson.encode({at = tonumber(at) / 1000, by = by, action = action}))
  end
  redis.call('XADD', prefix .. 'audit', 'MAXLEN', '~', 10000, '*',
    'job_id', job_id, 'by', by, 'action', action, 'at', at)
end
