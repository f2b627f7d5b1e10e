-- Shared helpers, inlined into every script by scripts.py (`--!include common`).

-- Redis formats Lua numbers passed to redis.call with "%.14g", which rounds
-- large scores and millisecond timestamps. Every number that becomes a score
-- or a stored integer goes through num() instead.
local function num(x)
  return string.format('%.0f', x)
end

-- Waiting jobs sit in one sorted set ordered by priority, then by a sequence
-- number: lower priority first, FIFO within a priority.
local SEQ_SPAN = 4294967296

local function wait_score(priority, seq)
  return num(tonumber(priority) * SEQ_SPAN + (tonumber(seq) % SEQ_SPAN))
end

-- Append one lifecycle event to the queue's capped stream.
local function emit(events_key, maxlen, event, job_id, ...)
  redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*',
    'event', event, 'job_id', job_id, ...)
end

-- Put a job id into the waiting set and wake one blocked worker.
-- `seq` may be the job's original sequence number (to keep its place in line)
-- or a fresh one from the queue's counter.
local function make_waiting(job_key, wait_key, marker_key, id, priority, seq)
  redis.call('ZADD', wait_key, wait_score(priority, seq), id)
  redis.call('HSET', job_key, 'state', 'waiting')
  redis.call('ZADD', marker_key, 0, '0')
end

local function next_seq(seq_key)
  return redis.call('INCR', seq_key)
end
