-- Shared helpers, inlined into every script by script_call.py (`--!include common`).
-- Key names below are built from the queue's hash-tagged prefix only.

-- The arguments of every script (lua/*.lua) start with the same head:
--   ARGV[1] prefix: the queue's key prefix, "sq:{name}:"
--   ARGV[2] now: the time in ms (the caller's clock, so tests control it)
--   ARGV[3] maxlen: about how many events the queue's stream keeps
-- then the script's own arguments from ARGV[4] on. A script with no use for
-- one of the three gets "" there and its header marks it `(unused)`, so no
-- argument ever moves. A header names each of its KEYS and ARGV: `KEYS[n]
-- name` with the sandboxq.keys.QueueKeys field (or the Python wrapper's
-- parameter), `ARGV[n] name` with the wrapper's parameter, `ARGV[n..] names`
-- for a variable tail; tests/test_lua_headers.py checks every header
-- against its wrapper and its script's code.

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

-- Anything can be stored where a script expects a number (another tool, an
-- old version, a person's HSET), and a script that raised on it would abort
-- its whole call: every job of a batch, after some writes were made. So a
-- number read back from Redis goes through one of these, which never raise:
-- what they cannot use becomes a default. (The worker fails a job whose
-- fields are garbage itself, saying why; fetch.lua reports a queue setting
-- it cannot use.) Numbers stay below 2^53, where a double is exact.
local EXACT_LIMIT = 9007199254740992

-- A stored number: the value if it is a finite number within +/- 2^53,
-- else `default` (a missing field, text, NaN, an infinity...). For what
-- concerns one job (its counts, its place in line) and for scores: cheap.
local function stored_number(value, default)
  local n = tonumber(value)
  if n == nil or not (n > -EXACT_LIMIT and n < EXACT_LIMIT) then return default end
  return n
end

-- A stored integer written the way sandboxq writes every number, and the
-- worker's decoder and API read them: "-"? and digits, within +/- 2^53;
-- else `default`. For what reaches beyond one job (a queue's settings, a
-- job's retention, which trims the queue's finished set): tonumber alone
-- would read " 7 ", "0x10" or "1e1" as numbers the worker calls corrupt,
-- and a junk keep_completed of "0x10" would trim the queue to 16 jobs.
local function stored_integer(value, default)
  if type(value) ~= 'string' or not string.match(value, '^%-?%d+$') then return default end
  return stored_number(value, default)
end

-- Counts (attempts_made, leases, stalls, retries, step_count) are whole
-- numbers from 0 to under 2^40: no job gets near that many (one retry a
-- millisecond for 30 years), and Redis writes a Lua number that small
-- exactly. A stored count that is anything else counts as 0.
local COUNT_LIMIT = 1099511627776
local function stored_count(value)
  local n = stored_number(value, 0)
  if not (n >= 0 and n < COUNT_LIMIT) or n % 1 ~= 0 then return 0 end
  return n
end

-- Whether a reply of redis.pcall is an error (e.g. WRONGTYPE: the key holds
-- something other than what the script expects).
local function is_error(reply)
  return type(reply) == 'table' and reply.err ~= nil
end

-- A step of a counter as a command argument: redis.call formats a Lua
-- number with printf's float code, on the hot path for every job; the
-- common steps are written once.
local STEPS = {[1] = '1', [-1] = '-1'}
local function step_arg(by)
  return STEPS[by] or num(by)
end

-- HINCRBY on a hash that is known to be a hash, where a stored value that
-- is not an integer (HINCRBY refuses it) counts as 0. Returns the new value.
local function hincr(key, field, by)
  local n = redis.pcall('HINCRBY', key, field, step_arg(by))
  if is_error(n) then
    redis.call('HSET', key, field, step_arg(by))
    return by
  end
  return n
end

-- INCRBY on a counter of the queue's (seq, gcount, group_rr); a value that
-- is not an integer restarts it from 0 rather than stopping every script
-- that counts.
local function incr(key, by)
  local n = redis.pcall('INCRBY', key, step_arg(by))
  if is_error(n) then
    redis.call('SET', key, step_arg(by))
    return by
  end
  return n
end

local function next_seq(seq_key)
  return incr(seq_key, 1)
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
    cached = stored_integer(redis.call('HGET', prefix .. 'meta', 'aging_ms'), 0)
    aging_cache[prefix] = cached
  end
  return cached
end

-- The values may come from the job's hash: garbage counts as 0.
local function wait_score(prefix, priority, seq, since)
  local aging = aging_ms(prefix)
  priority = stored_number(priority, 0)
  if aging > 0 then
    return num(priority * aging + stored_number(since, 0))
  end
  return num(priority * SEQ_SPAN + (stored_number(seq, 0) % SEQ_SPAN))
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
  redis.call('ZADD', prefix .. 'groups', incr(prefix .. 'group_rr', 1), group)
end

-- Put a job id into its waiting set: its group's (`group`, or false), or
-- the queue's. The caller sets its state and wakes a worker.
local function enter_wait(prefix, id, score, group)
  if group then
    redis.call('SADD', prefix .. 'group_names', group)
    incr(prefix .. 'gcount', 1)
    redis.call('ZADD', prefix .. 'gwait:' .. group, score, id)
    ready_group(prefix, group)
  else
    redis.call('ZADD', prefix .. 'wait', score, id)
  end
end
