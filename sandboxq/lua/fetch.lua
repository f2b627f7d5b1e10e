-- fetch: promote due delayed jobs, then lease up to `count` waiting jobs,
-- within the queue's limits.
--
-- KEYS[1] wait     KEYS[2] delayed   KEYS[3] active   KEYS[4] meta
-- KEYS[5] marker   KEYS[6] events    KEYS[7] seq counter
--
-- ARGV[1] key prefix   ARGV[2] now (ms)   ARGV[3] count   ARGV[4] lease token
-- ARGV[5] lease (ms)   ARGV[6] events maxlen
-- ARGV[7] request number (this token's fetches count up; "" = none)
-- ARGV[8] how many of the jobs start now ("" = all): the worker has a free
--         child for each. The others are prefetched: leased (in `active`,
--         their lease renewed like any other) but not started. They get
--         `started_at` and their `active` event when a child takes them
--         (finish.lua's starts), so both mark the real start.
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
-- Returns {jobs, next_check, limited, has_limits}: jobs is a flat array of
-- (id, hash as a flat field/value array) per leased job; next_check is the
-- earliest time (ms) something may become ready without an add (a delayed
-- job due, a rate window opening, a paused group resuming), or -1; limited
-- is 1 when a limit (not an empty queue) held jobs back; has_limits is 1
-- when the queue has a rate or concurrency limit (its own or per group):
-- such limits count leases, so a worker must not prefetch its jobs.
--!include common
--!include promote
--!include retention
--!include flow
local prefix, now, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local token, lease, maxlen = ARGV[4], tonumber(ARGV[5]), ARGV[6]
local request = tonumber(ARGV[7] or '')
local start_now = tonumber(ARGV[8] or '') or count
local checks = {}

if request then
  local given_up = redis.call('HGET', prefix .. 'given_up', token)
  if given_up and request <= tonumber(string.match(given_up, '^%d+')) then
    return {{}, -1, 0, 0}
  end
end

promote_due(prefix, KEYS[2], KEYS[6], maxlen, now, 1000)

local s = redis.call('HMGET', KEYS[4], 'paused', 'rl_until', 'concurrency', 'rl_max',
  'rl_window_ms', 'gconcurrency', 'grl_max', 'grl_window_ms', 'turn', 'clock')
-- Start times never go backwards within a queue: each worker passes its own
-- clock, and one that computed `now` a little earlier but ran later must
-- not start jobs "in the past", or a sliding window could admit more than
-- its limit. So `now` is at least the last start recorded.
local clock = tonumber(s[10] or '0')
if clock > now then now = clock end
local allowed = count
local limited = false
if s[1] then allowed = 0 end
local rl_until = tonumber(s[2] or '0')
if rl_until > now then
  allowed = 0
  limited = true
  checks[#checks + 1] = rl_until
end
local concurrency = tonumber(s[3] or '0')
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
local rl_max, rl_window = tonumber(s[4] or '0'), tonumber(s[5] or '0')
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

local gconc = tonumber(s[6] or '0')
local grl_max, grl_window = tonumber(s[7] or '0'), tonumber(s[8] or '0')
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
  if gconc > 0 and tonumber(redis.call('HGET', prefix .. 'group_active', group) or '0') >= gconc then
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
  redis.call('DECR', prefix .. 'gcount')
  if redis.call('ZCARD', gwait) > 0 then
    redis.call('ZADD', groups_key, redis.call('INCR', prefix .. 'group_rr'), group)
  else
    redis.call('ZREM', groups_key, group)
  end
  redis.call('HINCRBY', prefix .. 'group_active', group, 1)
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

-- Lease one job (false if it no longer exists). The hash is read first and
-- returned with its lease count and state brought up to date: the worker
-- reads the job's fields from this reply.
local function lease_job(id)
  local job_key = prefix .. 'job:' .. id
  local fields = redis.call('HGETALL', job_key)
  if #fields == 0 then return false end
  local leases, flow_parent = nil, false
  for i = 1, #fields, 2 do
    local name = fields[i]
    if name == 'leases' then
      leases = tonumber(fields[i + 1]) + 1
      fields[i + 1] = tostring(leases)
    elseif name == 'state' then
      fields[i + 1] = 'active'
    elseif name == 'pending' then
      flow_parent = true
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
  if flow_parent then
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
    local id
    if group_turn or not has_plain then
      id = take_from_group(next_group)
    else
      id = redis.call('ZPOPMIN', KEYS[1])[1]
    end
    if has_plain then group_turn = not group_turn end
    if id then lease_job(id) end
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
  if next_check < 0 or t < next_check then next_check = t end
end
local has_limits = rl_max > 0 or concurrency > 0 or gconc > 0 or grl_max > 0
return {jobs, next_check, limited and 1 or 0, has_limits and 1 or 0}
