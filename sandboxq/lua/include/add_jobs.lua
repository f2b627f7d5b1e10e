-- Create jobs from a run of ARGV, shared by add.lua and fire_schedule.lua.
-- Per job: job_id ("" = generate), priority, delay_ms, n, then n field/value
-- pairs written to the job hash as they are. A job id that exists already
-- is left alone (deduplication). Counts that start at 0 (attempts_made,
-- stalls) are not written: every reader takes a missing count for 0.
--
-- `k` holds the key names: id, seq, wait, delayed, marker, events.
-- Returns a flat array (id, 1 if created else 0, ...).
-- Needs: common.
local function add_jobs(prefix, now, maxlen, k, args, first_index)
  local out = {}
  local woke = false
  local i = first_index
  while i <= #args do
    local id, priority, delay = args[i], args[i + 1], tonumber(args[i + 2])
    local n = tonumber(args[i + 3])
    local first, last = i + 4, i + 3 + 2 * n
    i = last + 1
    -- A generated id is new: a custom id cannot be a plain integer (JobOptions).
    local custom = id ~= ''
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
    local job_key = prefix .. 'job:' .. id
    if custom and redis.call('EXISTS', job_key) == 1 then
      out[#out + 1] = id
      out[#out + 1] = 0
    else
      if delay > 0 then
        redis.call('HSET', job_key, 'priority', priority, 'created_at', num(now),
          'state', 'delayed', unpack(args, first, last))
        redis.call('ZADD', k.delayed, num(now + delay), id)
        emit(k.events, maxlen, 'added', id, 'state', 'delayed', 'delay_ms', num(delay))
        emit(k.events, maxlen, 'delayed', id, 'delay_ms', num(delay))
      else
        -- What make_waiting does, in one write: a new job has no place yet.
        local group = false
        for j = first, last, 2 do
          if args[j] == 'group' then group = args[j + 1] end
        end
        local seq, since = next_seq(prefix .. 'seq'), num(now)
        redis.call('HSET', job_key, 'priority', priority, 'created_at', since,
          'state', 'waiting', 'seq', seq, 'waiting_since', since, unpack(args, first, last))
        enter_wait(prefix, id, wait_score(prefix, priority, seq, since), group)
        emit(k.events, maxlen, 'added', id, 'state', 'waiting')
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
