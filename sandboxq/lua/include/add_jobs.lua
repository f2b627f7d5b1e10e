-- Create jobs from a run of ARGV, shared by add.lua and fire_schedule.lua.
-- Per job: job_id ("" = generate), priority, delay_ms, dedupe_id ("" =
-- none; else ttl_ms (0 = none), extend and replace ("1"/"0") follow it),
-- n, then n field/value pairs written to the job hash as they are. A job id
-- that exists already is left alone (deduplication). Counts that start at 0
-- (attempts_made, stalls) are not written: every reader takes a missing
-- count for 0.
--
-- A dedupe id's window is the key prefix .. 'dedupe:' .. id, holding the id
-- of the job that opened it (with the ttl as its expiry, when there is one).
-- It is open while that key names a job that is not finished, or, for a key
-- with a ttl, until the key expires, whatever became of the job. A job
-- records its dedupe_id; it releases a key without a ttl when it finishes
-- or is deleted (retention.lua), and a key left naming a finished or
-- missing job counts as no window here.
--
-- `k` holds the key names: id, seq, wait, delayed, marker, events.
-- Returns a flat array (id, 1 if created else 0, ...).
-- Needs: common, moves.

-- A job's arguments from its first one, i: its dedupe window (id "" for
-- none: ttl_ms, extend and replace are then nil), and the first and last of
-- its field/value pairs. (No table: every plain add reads its job here.)
local function job_layout(args, i)
  local dedupe_id = args[i + 3]
  if dedupe_id == '' then
    return '', nil, nil, nil, i + 5, i + 4 + 2 * tonumber(args[i + 4])
  end
  return dedupe_id, tonumber(args[i + 4]), args[i + 5] == '1', args[i + 6] == '1',
    i + 8, i + 7 + 2 * tonumber(args[i + 7])
end

-- A key another tool wrote where a window is kept could not be read once
-- some jobs of the batch were written: every window is checked first.
local function check_dedupe_keys(prefix, args, first_index)
  local i = first_index
  while i <= #args do
    local dedupe_id, _, _, _, _, last = job_layout(args, i)
    if dedupe_id ~= '' then
      local key = prefix .. 'dedupe:' .. dedupe_id
      local held = redis.pcall('GET', key)
      if is_error(held) then
        error('the dedupe key ' .. key .. ' holds no job id (' .. held.err .. '); delete it '
          .. 'to add jobs with that dedupe id again')
      end
    end
    i = last + 1
  end
end

-- The job whose window is open for this dedupe key, and its state; nil
-- when no window is open.
local function open_window(prefix, key)
  local held = redis.call('GET', key)
  if not held then return nil end
  local state = redis.pcall('HGET', prefix .. 'job:' .. held, 'state')
  if is_error(state) then state = false end  -- not a hash: no job to wait for
  local unfinished = state and state ~= 'completed' and state ~= 'failed' and state ~= 'cancelled'
  if unfinished or redis.call('PTTL', key) > 0 then
    return held, state
  end
  return nil
end

-- Write a job's hash (fields from args[first..last]) and put it into
-- `delayed` or waiting. A new job emits `added`; a replaced one (`created`:
-- the creation time it keeps) does not. Returns the state it entered.
local function place_job(prefix, now, maxlen, k, id, priority, delay, args, first, last, created)
  local job_key = prefix .. 'job:' .. id
  if delay > 0 then
    redis.call('HSET', job_key, 'priority', priority, 'created_at', created or num(now),
      'state', 'delayed', unpack(args, first, last))
    redis.call('ZADD', k.delayed, num(now + delay), id)
    if not created then
      emit(k.events, maxlen, 'added', id, 'state', 'delayed', 'delay_ms', num(delay))
      emit(k.events, maxlen, 'delayed', id, 'delay_ms', num(delay))
    end
    return 'delayed'
  end
  -- What make_waiting does, in one write: a new job has no place yet.
  local group = false
  for j = first, last, 2 do
    if args[j] == 'group' then group = args[j + 1] end
  end
  local seq, since = next_seq(prefix .. 'seq'), num(now)
  redis.call('HSET', job_key, 'priority', priority, 'created_at', created or since,
    'state', 'waiting', 'seq', seq, 'waiting_since', since, unpack(args, first, last))
  enter_wait(prefix, id, wait_score(prefix, priority, seq, since), group)
  if not created then emit(k.events, maxlen, 'added', id, 'state', 'waiting') end
  return 'waiting'
end

-- A deduplicated add with `replace`, while the job is waiting or delayed:
-- take it out of its place, clear the options it had, and place it again
-- with this add's fields, as a new job would be (its delay starts now).
local function replace_job(prefix, now, maxlen, k, id, state, priority, delay, args, first, last)
  local job_key = prefix .. 'job:' .. id
  if state == 'delayed' then
    redis.call('ZREM', k.delayed, id)
  else
    unwait(prefix, job_key, id)  -- (reads the group it waits in: before it is cleared)
  end
  local created = stored_integer(redis.call('HGET', job_key, 'created_at'), nil)
  -- The fields a job's options may set (JobOptions.hash_fields; a test
  -- checks they agree): those the new options do not set must go.
  redis.call('HDEL', job_key, 'attempts', 'group', 'manual_retry_only', 'backoff', 'timeout',
    'kc_count', 'kc_age', 'kf_count', 'kf_age', 'dedupe_id')
  return place_job(prefix, now, maxlen, k, id, priority, delay, args, first, last,
    created and num(created) or num(now))
end

local function add_jobs(prefix, now, maxlen, k, args, first_index)
  local out = {}
  local woke = false
  check_dedupe_keys(prefix, args, first_index)
  local i = first_index
  while i <= #args do
    local id, priority, delay = args[i], args[i + 1], tonumber(args[i + 2])
    local dedupe_id, ttl, extend, replace, first, last = job_layout(args, i)
    i = last + 1
    -- A generated id is new: a custom id cannot be a plain integer (JobOptions).
    local custom = id ~= ''
    local held, held_state, dedupe_key
    if custom and redis.call('EXISTS', prefix .. 'job:' .. id) == 1 then
      held = id  -- an existing custom id comes first: nothing else is looked at
    elseif dedupe_id ~= '' then
      dedupe_key = prefix .. 'dedupe:' .. dedupe_id
      held, held_state = open_window(prefix, dedupe_key)
      if held then
        if extend and ttl > 0 then redis.call('PEXPIRE', dedupe_key, ttl) end
        local replaced = '0'
        if replace and (held_state == 'waiting' or held_state == 'delayed') then
          replace_job(prefix, now, maxlen, k, held, held_state, priority, delay, args, first, last)
          replaced, woke = '1', true
        end
        incr(prefix .. 'deduplicated', 1)
        emit(k.events, maxlen, 'deduplicated', held, 'dedupe_id', dedupe_id, 'replaced', replaced)
      end
    end
    if held then
      out[#out + 1] = held
      out[#out + 1] = 0
    else
      if not custom then
        local n = redis.pcall('INCR', k.id)
        -- Restarting the counter could hand out the ids of existing jobs: stop
        -- instead (jobs before this one in the batch have custom ids, so
        -- adding the batch again changes nothing for them).
        if is_error(n) then
          error('the job id counter ' .. k.id .. ' holds no integer (' .. n.err .. '); set it '
            .. 'to the highest job id to add jobs again')
        end
        id = tostring(n)
      end
      place_job(prefix, now, maxlen, k, id, priority, delay, args, first, last, nil)
      if dedupe_key then
        if ttl > 0 then
          redis.call('SET', dedupe_key, id, 'PX', ttl)
        else
          redis.call('SET', dedupe_key, id)
        end
      end
      woke = true
      out[#out + 1] = id
      out[#out + 1] = 1
    end
  end
  -- One marker per call wakes a blocked worker: for a new waiting job, or so it
  -- recomputes how long to sleep until the earliest delayed job.
  if woke then redis.call('ZADD', k.marker, 0, '0') end
  return out
end
