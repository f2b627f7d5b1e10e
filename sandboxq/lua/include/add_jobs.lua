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
-- missing job counts as no window here. An add the window holds back
-- returns that job's id (not created), counts in prefix .. 'deduplicated'
-- and emits `deduplicated`; with replace, a job still waiting or delayed
-- takes the add's fields instead and is placed again as a new job would be.
--
-- Everything is written inline in one function: Redis runs a script's body
-- on every call, and each function it defines is a closure made again each
-- time, which a plain add would pay for (moves.lua's helpers too): one
-- small helper only.
--
-- `k` holds the key names: id, seq, wait, delayed, marker, events.
-- Returns a flat array (id, 1 if created else 0, ...).
-- Needs: common.

-- What a window key holds (GET), or an error naming it when it is no string.
local function window_of(key)
  local held = redis.pcall('GET', key)
  if is_error(held) then
    error('the dedupe key ' .. key .. ' holds no job id (' .. held.err .. '); delete it '
      .. 'to add jobs with that dedupe id again')
  end
  return held
end

local function add_jobs(prefix, now, maxlen, k, args, first_index)
  local out = {}
  if first_index > #args then return out end
  local woke = false
  -- Where the first job's fields end (read once: a plain add has one job).
  local at = first_index + 4
  if args[first_index + 3] ~= '' then at = first_index + 7 end
  local first_last = at + 2 * tonumber(args[at])
  -- A window key another tool wrote (not a string) stops the call, naming
  -- it: before anything is written, so the jobs after the first are
  -- checked first (the first is, below, before its writes).
  local i = first_last + 1
  while i <= #args do
    at = i + 4
    if args[i + 3] ~= '' then
      window_of(prefix .. 'dedupe:' .. args[i + 3])
      at = i + 7
    end
    i = at + 1 + 2 * tonumber(args[at])
  end
  i = first_index
  while i <= #args do
    local id, priority, delay, dedupe_id = args[i], args[i + 1], tonumber(args[i + 2]), args[i + 3]
    at = i + 4
    if dedupe_id ~= '' then at = i + 7 end
    local first, last = at + 1, first_last or at + 2 * tonumber(args[at])
    first_last = nil
    -- A generated id is new: a custom id cannot be a plain integer (JobOptions).
    local custom = id ~= ''
    local held, created, dedupe_key
    if custom and redis.call('EXISTS', prefix .. 'job:' .. id) == 1 then
      held = id  -- an existing custom id comes first: nothing else is looked at
    elseif dedupe_id ~= '' then
      dedupe_key = prefix .. 'dedupe:' .. dedupe_id
      held = window_of(dedupe_key)
      local state = false
      if held then
        state = redis.pcall('HGET', prefix .. 'job:' .. held, 'state')
        if is_error(state) then state = false end  -- not a hash: no job to wait for
        local unfinished = state and state ~= 'completed' and state ~= 'failed'
          and state ~= 'cancelled'
        if not unfinished and redis.call('PTTL', dedupe_key) <= 0 then held = nil end
      end
      if held then
        local ttl = tonumber(args[i + 4])
        if args[i + 5] == '1' and ttl > 0 then redis.call('PEXPIRE', dedupe_key, ttl) end
        local replaced = '0'
        if args[i + 6] == '1' and (state == 'waiting' or state == 'delayed') then
          -- Out of its place (its old group's set, read before the group
          -- goes), less every field options may set (JobOptions.hash_fields;
          -- a test checks they agree); placed again below with this add's.
          local job_key = prefix .. 'job:' .. held
          local f = redis.call('HMGET', job_key, 'group', 'created_at')
          if state == 'delayed' then
            redis.call('ZREM', k.delayed, held)
          elseif f[1] then
            if redis.call('ZREM', prefix .. 'gwait:' .. f[1], held) == 1 then
              incr(prefix .. 'gcount', -1)
            end
          else
            redis.call('ZREM', k.wait, held)
          end
          redis.call('HDEL', job_key, 'attempts', 'group', 'manual_retry_only', 'backoff',
            'timeout', 'kc_count', 'kc_age', 'kf_count', 'kf_age', 'dedupe_id')
          created = stored_integer(f[2], nil)
          created = created and num(created) or num(now)
          id, replaced = held, '1'
        end
        incr(prefix .. 'deduplicated', 1)
        emit(k.events, maxlen, 'deduplicated', held, 'dedupe_id', dedupe_id, 'replaced', replaced)
      end
    end
    if held and not created then
      out[#out + 1] = held
      out[#out + 1] = 0
    else
      if not held and not custom then
        local n = redis.pcall('INCR', k.id)
        -- Restarting the counter could hand out the ids of existing jobs: stop
        -- instead (jobs before this one in the batch have custom ids or were
        -- deduplicated, so adding the batch again changes nothing for them).
        if is_error(n) then
          error('the job id counter ' .. k.id .. ' holds no integer (' .. n.err .. '); set it '
            .. 'to the highest job id to add jobs again')
        end
        id = tostring(n)
      end
      -- A new job, or the one a replacing add places again (`created`: the
      -- creation time it keeps; no `added` event for it).
      local job_key = prefix .. 'job:' .. id
      if delay > 0 then
        redis.call('HSET', job_key, 'priority', priority, 'created_at', created or num(now),
          'state', 'delayed', unpack(args, first, last))
        redis.call('ZADD', k.delayed, num(now + delay), id)
        if not created then
          emit(k.events, maxlen, 'added', id, 'state', 'delayed', 'delay_ms', num(delay))
          emit(k.events, maxlen, 'delayed', id, 'delay_ms', num(delay))
        end
      else
        -- What make_waiting does, in one write: the job has no place now.
        local group = false
        for j = first, last, 2 do
          if args[j] == 'group' then group = args[j + 1] end
        end
        local seq, since = next_seq(prefix .. 'seq'), num(now)
        redis.call('HSET', job_key, 'priority', priority, 'created_at', created or since,
          'state', 'waiting', 'seq', seq, 'waiting_since', since, unpack(args, first, last))
        enter_wait(prefix, id, wait_score(prefix, priority, seq, since), group)
        if not created then emit(k.events, maxlen, 'added', id, 'state', 'waiting') end
      end
      if dedupe_key and not held then
        local ttl = tonumber(args[i + 4])
        if ttl > 0 then
          redis.call('SET', dedupe_key, id, 'PX', ttl)
        else
          redis.call('SET', dedupe_key, id)
        end
      end
      woke = true
      out[#out + 1] = id
      out[#out + 1] = created and 0 or 1
    end
    i = last + 1
  end
  -- One marker per call wakes a blocked worker: for a new waiting job, or so it
  -- recomputes how long to sleep until the earliest delayed job.
  if woke then redis.call('ZADD', k.marker, 0, '0') end
  return out
end
