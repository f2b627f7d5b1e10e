-- fetch: promote due delayed jobs, then lease up to `count` waiting jobs,
-- within the queue's limits.
--
-- KEYS[1] wait     KEYS[2] delayed   KEYS[3] active   KEYS[4] meta
-- KEYS[5] marker   KEYS[6] events    KEYS[7] seq
--
-- ARGV[1] prefix   ARGV[2] now   ARGV[3] maxlen   (the head: include/common.lua)
-- ARGV[4] count: the most jobs to lease   ARGV[5] token: the lease token
-- ARGV[6] lease_ms: how long a lease lasts
-- ARGV[7] request: this fetch's number (a token's fetches count up; "" = none)
-- ARGV[8] start_now: how many of the jobs start now ("" = all): the worker
--         has a free child for each. The others are prefetched: leased (in
--         `active`, their lease renewed like any other) but not started.
--         They get `started_at` and their `active` event when a child takes
--         them (finish.lua's starts), so both mark the real start.
--
-- A lease is the token stored on the job plus a deadline, the job's score in
-- `active`. Renewing moves the deadline; a deadline in the past means stalled.
-- Each lease is numbered (`leases` counts them); the worker passes the number
-- back to finish.lua, so a finish sent twice is recognized.
--
-- A worker that lost a fetch's reply (or gave up waiting for it) cannot know
-- whether the fetch ran: reclaim.lua hands back what it took and marks the
-- request numbers up to it as given up (`given_up`, token -> "number ms").
-- A fetch that reaches Redis after that (it waited in a socket buffer)
-- leases nothing.
--
-- Limits (meta fields, set by configure.lua): paused; rl_until (a handler's
-- RateLimited); concurrency (active jobs across all workers); rl_max and
-- rl_window_ms (starts per sliding window, log in `limiter`); per group:
-- gconcurrency, grl_max and grl_window_ms (log in glimiter:<group>). Ungrouped
-- jobs and groups take turns; groups take turns among themselves (`groups`,
-- round robin), so a big group cannot starve a small one.
--
-- A setting the worker cannot use (not a number, negative, not whole where
-- a count is kept, above the bounds of sandboxq/options.py, a rate limit
-- without a window of at least 1 ms) is not guessed at: the fetch promotes
-- and leases nothing and names the first such setting in `problem`.
--
-- A job whose hash is gone is dropped from the line. One whose key holds
-- something other than a hash (another tool wrote it) cannot be leased: it
-- leaves the line for the `failed` set, with a `failed` event, so it is not
-- lost silently (include/common.lua's quarantine). A job's fields are
-- returned as stored: the worker judges them (a garbage `leases` count
-- restarts from 0).
--
-- Returns {jobs, next_check, limited, has_limits, problem}: jobs is a flat
-- array of (id, hash as a flat field/value array) per leased job;
-- next_check is the earliest time (ms) something may become ready without
-- an add (a delayed job due, a rate window opening, a paused group
-- resuming), or -1; limited is 1 when a limit (not an empty queue) held jobs
-- back; has_limits is 1 when the queue has a rate or concurrency limit (its
-- own or per group), or a setting with a problem: such limits count leases,
-- so a worker must not prefetch its jobs; problem is "" when the settings
-- are usable, else a message such as "setting 'rl_max' = 'abc' is not a
-- number" (the value cut to 50 bytes, other than printable ASCII as \xNN).
--!include common
--!include moves
--!include promote
--!include retention
--!include flow
--!include dependents
local prefix, now, maxlen = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local count, token, lease = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local request = tonumber(ARGV[7] or '')
local start_now = tonumber(ARGV[8] or '') or count
local checks = {}

if request then
  local given_up = redis.call('HGET', prefix .. 'given_up', token)
  -- A mark that is not reclaim.lua's ("<number> <ms>") marks nothing.
  local upto = given_up and tonumber(string.match(given_up, '^%d+') or '')
  if upto and request <= upto then
    return {{}, -1, 0, 0, ''}
  end
end

-- The bounds sandboxq/options.py puts on the settings it stores (a test
-- checks that both say the same).
local MAX_RATE_LIMIT_JOBS = 1000000000
local MAX_CONCURRENCY = 1000000
local MAX_WINDOW_MS = 3153600000000
local MAX_AGING_MS = 2592000000

local s = redis.call('HMGET', KEYS[4], 'paused', 'rl_until', 'concurrency', 'rl_max',
  'rl_window_ms', 'gconcurrency', 'grl_max', 'grl_window_ms', 'turn', 'clock', 'aging_ms')
local problem = ''

-- A stored value as a problem shows it: at most 50 bytes, with anything but
-- printable ASCII as \xNN, so the message is short, readable text.
local function shown(raw)
  local text = string.gsub(string.sub(raw, 1, 50), '[%z\1-\31\127-\255]', function(c)
    return string.format('\\x%02x', string.byte(c))
  end)
  if #raw > 50 then text = text .. '...' end
  return text
end

-- Setting number `index` (named `name`): 0 when unset, else a number from
-- `min` to `max` (whole when `whole`). Anything else is a problem (the
-- first found is reported) and counts as 0.
local function setting(index, name, min, max)
  local raw = s[index]
  if not raw then return 0 end
  local n = stored_integer(raw, nil)
  local why
  if n == nil then
    local loose = tonumber(raw)
    why = (loose == nil or loose ~= loose) and 'is not a number' or 'is not a whole number'
  elseif n < min or n > max then
    why = string.format('is out of range (%.0f to %.0f)', min, max)
  end
  if why and problem == '' then
    problem = "setting '" .. name .. "' = '" .. shown(raw) .. "' " .. why
  end
  return why and 0 or n
end

-- A rate limit's window: at least 1 ms when its max is set.
local function window_setting(index, name, max_jobs, max_name)
  local window = setting(index, name, 0, MAX_WINDOW_MS)
  if max_jobs > 0 and window < 1 and problem == '' then
    problem = "setting '" .. name .. "' = '" .. shown(s[index] or '') .. "' must be at least 1 "
      .. 'when ' .. max_name .. ' is set'
  end
  return window
end

local rl_until = setting(2, 'rl_until', 0, EXACT_LIMIT - 1)
local concurrency = setting(3, 'concurrency', 0, MAX_CONCURRENCY)
local rl_max = setting(4, 'rl_max', 0, MAX_RATE_LIMIT_JOBS)
local rl_window = window_setting(5, 'rl_window_ms', rl_max, 'rl_max')
local gconc = setting(6, 'gconcurrency', 0, MAX_CONCURRENCY)
local grl_max = setting(7, 'grl_max', 0, MAX_RATE_LIMIT_JOBS)
local grl_window = window_setting(8, 'grl_window_ms', grl_max, 'grl_max')
aging_cache[prefix] = setting(11, 'aging_ms', 0, MAX_AGING_MS)
if problem ~= '' then return {{}, -1, 0, 1, problem} end

promote_due(prefix, KEYS[2], KEYS[6], maxlen, now, 1000)

-- Start times never go backwards within a queue: each worker passes its own
-- clock, and one that computed `now` a little earlier but ran later must
-- not start jobs "in the past", or a sliding window could admit more than
-- its limit. So `now` is at least the last start recorded. (The clock is
-- fetch's own bookkeeping: a garbage one is ignored and written anew.)
local clock = stored_number(s[10], 0)
if clock > now then now = clock end
local allowed = count
local limited = false
if s[1] then allowed = 0 end
if rl_until > now then
  allowed = 0
  limited = true
  checks[#checks + 1] = rl_until
end
if allowed > 0 and concurrency > 0 then
  local room = concurrency - redis.call('ZCARD', KEYS[3])
  if room < allowed then allowed, limited = math.max(room, 0), true end
end

-- A sliding window log: at most `max` starts in any `window` ms. Returns how
-- many more may start now; when none, notes when the oldest start expires.
local function window_room(log_key, max, window)
  redis.call('ZREMRANGEBYSCORE', log_key, '-inf', num(now - window))
  local used = redis.call('ZCARD', log_key)
  if used < max then return max - used end
  -- Room opens when enough starts expire to bring the log under max (more
  -- than one if the limit was lowered since they started).
  local blocking = redis.call('ZRANGE', log_key, used - max, used - max, 'WITHSCORES')
  return 0, tonumber(blocking[2]) + window
end

local limiter = prefix .. 'limiter'
if allowed > 0 and rl_max > 0 then
  local room, opens = window_room(limiter, rl_max, rl_window)
  if room < allowed then allowed, limited = room, true end
  if opens then checks[#checks + 1] = opens end
end

-- Groups whose pause ended take their turn again.
local paused_key = prefix .. 'group_paused'
for _, group in ipairs(redis.call('ZRANGEBYSCORE', paused_key, '-inf', num(now))) do
  redis.call('ZREM', paused_key, group)
  if redis.call('ZCARD', prefix .. 'gwait:' .. group) > 0 then ready_group(prefix, group) end
end

local groups_key = prefix .. 'groups'

-- The next job of the group whose turn it is, or nil if that group is at a
-- limit (it then leaves the rotation until a slot frees or its window opens)
-- or has no job left (removed, drained or cleaned while it had its turn).
local function take_from_group(group)
  local gwait = prefix .. 'gwait:' .. group
  if redis.call('ZCARD', gwait) == 0 then
    redis.call('ZREM', groups_key, group)  -- make_waiting() puts it back
    return nil
  end
  if gconc > 0 and stored_number(redis.call('HGET', prefix .. 'group_active', group), 0) >= gconc then
    redis.call('ZREM', groups_key, group)  -- leave_active() puts it back
    limited = true
    return nil
  end
  local glog = prefix .. 'glimiter:' .. group
  if grl_max > 0 then
    local room, opens = window_room(glog, grl_max, grl_window)
    if room <= 0 then
      redis.call('ZREM', groups_key, group)
      redis.call('ZADD', paused_key, num(opens), group)
      limited = true
      return nil
    end
  end
  local id = redis.call('ZPOPMIN', gwait)[1]
  incr(prefix .. 'gcount', -1)
  if redis.call('ZCARD', gwait) > 0 then
    redis.call('ZADD', groups_key, incr(prefix .. 'group_rr', 1), group)
  else
    redis.call('ZREM', groups_key, group)
  end
  if grl_max > 0 then
    redis.call('ZADD', glog, num(now), id .. ':' .. now)
    local room, opens = window_room(glog, grl_max, grl_window)
    if room <= 0 and redis.call('ZSCORE', groups_key, group) then  -- full: pause it now
      redis.call('ZREM', groups_key, group)
      redis.call('ZADD', paused_key, num(opens), group)
    end
  end
  return id
end

local jobs = {}
local taken = 0
local group_turn = s[9] == 'g'
local deadline = num(now + lease)
-- The leases' deadlines, written to `active` in one ZADD after the loop
-- (nothing in the loop reads `active`).
local deadlines = {}

-- Lease one job (false if it no longer exists, or its key holds no hash).
-- The hash is read first and returned with its lease count and state
-- brought up to date: the worker reads the job's fields from this reply.
local function lease_job(id)
  local job_key = prefix .. 'job:' .. id
  local fields = redis.pcall('HGETALL', job_key)
  if is_error(fields) then
    quarantine(prefix, id, now, KEYS[6], maxlen)
    return false
  end
  if #fields == 0 then return false end
  -- (a flow parent, or a job that waited for dependencies, reads their results)
  local leases, reads_results = nil, false
  for i = 1, #fields, 2 do
    local name = fields[i]
    if name == 'leases' then
      leases = stored_count(fields[i + 1]) + 1
      fields[i + 1] = tostring(leases)
    elseif name == 'state' then
      fields[i + 1] = 'active'
    elseif name == 'pending' or name == 'on_dependency_failure' then
      reads_results = true
    end
  end
  if not leases then
    leases = 1
    fields[#fields + 1] = 'leases'
    fields[#fields + 1] = '1'
  end
  deadlines[#deadlines + 1] = deadline
  deadlines[#deadlines + 1] = id
  if taken < start_now then
    redis.call('HSET', job_key, 'state', 'active', 'token', token, 'leases', leases,
      'started_at', num(now))
    emit(KEYS[6], maxlen, 'active', id)
  else
    redis.call('HSET', job_key, 'state', 'active', 'token', token, 'leases', leases)
  end
  if reads_results then
    fields[#fields + 1] = 'children'
    fields[#fields + 1] = children_json(prefix, id)
  end
  jobs[#jobs + 1] = id
  jobs[#jobs + 1] = fields
  taken = taken + 1
  if rl_max > 0 then redis.call('ZADD', limiter, num(now), id .. ':' .. now) end
  return true
end

while taken < allowed do
  local next_group = redis.call('ZRANGE', groups_key, 0, 0)[1]
  if not next_group then
    -- No group has a job ready: take the plain jobs in one pop.
    local popped = redis.call('ZPOPMIN', KEYS[1], allowed - taken)
    if #popped == 0 then break end
    for i = 1, #popped, 2 do lease_job(popped[i]) end
  else
    local has_plain = redis.call('ZCARD', KEYS[1]) > 0
    local id, group = nil, nil
    if group_turn or not has_plain then
      id = take_from_group(next_group)
      group = next_group
    else
      id = redis.call('ZPOPMIN', KEYS[1])[1]
    end
    if has_plain then group_turn = not group_turn end
    -- A leased job takes a slot of its group (leave_active frees it).
    if id and lease_job(id) and group then hincr(prefix .. 'group_active', group, 1) end
  end
end
for i = 1, #deadlines, 400 do  -- a bounded number of arguments per call
  redis.call('ZADD', KEYS[3], unpack(deadlines, i, math.min(i + 399, #deadlines)))
end
if rl_max > 0 then  -- the window filled up: say when it opens
  local _room, opens = window_room(limiter, rl_max, rl_window)
  if opens then checks[#checks + 1] = opens end
end
if taken > 0 and now > clock then redis.call('HSET', KEYS[4], 'clock', num(now)) end
if (s[9] == 'g') ~= group_turn then
  if group_turn then redis.call('HSET', KEYS[4], 'turn', 'g') else redis.call('HDEL', KEYS[4], 'turn') end
end
-- Filled every slot with work left over: pass the wake-up on to the next
-- blocked worker. (Short of slots because of a limit: the others would find
-- the same limit, so they sleep until next_check.)
if taken == count and count > 0 and (redis.call('ZCARD', KEYS[1]) > 0
    or redis.call('ZCARD', groups_key) > 0) then
  redis.call('ZADD', KEYS[5], 0, '0')
end

local first_delayed = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #first_delayed > 0 then checks[#checks + 1] = tonumber(first_delayed[2]) end
local first_paused = redis.call('ZRANGE', paused_key, 0, 0, 'WITHSCORES')
if #first_paused > 0 then checks[#checks + 1] = tonumber(first_paused[2]) end
local next_check = -1
for _, t in ipairs(checks) do
  -- A score someone set to inf (or a time past 2^53) is no time to wake.
  if t >= 0 and t < EXACT_LIMIT and (next_check < 0 or t < next_check) then next_check = t end
end
local has_limits = rl_max > 0 or concurrency > 0 or gconc > 0 or grl_max > 0
return {jobs, next_check, limited and 1 or 0, has_limits and 1 or 0, ''}
