-- reclaim: a worker lost the reply to a fetch (or gave up waiting for it), so
-- it cannot tell which jobs that fetch leased to it. Hand back every job its
-- token holds that it does not know it holds: none of them reached a child,
-- so each returns to its place in line with no attempt and no stall counted
-- (manual_retry_only jobs too: they never ran).
--
-- A fetch may also still be on its way (waiting in a socket buffer while
-- Redis was stalled). Marking its request number as given up makes it lease
-- nothing when it arrives (fetch.lua), so whichever runs first, every job
-- is either handed back here or never leased.
--
-- KEYS[1] active   KEYS[2] events   KEYS[3] cancelled   KEYS[4] cancel_requests
--
-- ARGV[1] prefix   ARGV[2] now   ARGV[3] maxlen   (the head: include/common.lua)
-- ARGV[4] token: the lease token   ARGV[5] request: the highest number given up
-- ARGV[6..] known: the ids the worker knows it holds
--
-- A job whose cancel was asked meanwhile (include/cancel.lua) is cancelled
-- instead of handed back. An id whose key holds no hash is left to
-- recover_stalled.lua.
--
-- Returns the ids handed back.
--!include common
--!include moves
--!include retention
--!include flow
--!include dependents
--!include cancel
--!include hand_back_one
local prefix, now, maxlen, token = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local given_up = prefix .. 'given_up'
redis.call('HSET', given_up, token, ARGV[5] .. ' ' .. num(now))

-- A mark only matters while a late fetch could still arrive: forget those
-- of workers that gave up a day ago (a worker that stops cleanly deletes
-- its own).
local marks = redis.call('HGETALL', given_up)
for i = 1, #marks, 2 do
  local at = tonumber(string.match(marks[i + 1], ' (%d+)$') or '0')
  if now - at > 86400000 then redis.call('HDEL', given_up, marks[i]) end
end

local known = {}
for i = 6, #ARGV do known[ARGV[i]] = true end
local returned = {}
-- A scan of every active job: bounded by the workers' concurrency, and only
-- after a lost reply, never on the hot path.
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local job_key = prefix .. 'job:' .. id
  if not known[id] and redis.pcall('HGET', job_key, 'token') == token then
    redis.call('ZREM', KEYS[1], id)
    local cancel_requested = redis.call('HEXISTS', job_key, 'cancel_requested_at') == 1
    if hand_back_one(prefix, job_key, id, now, maxlen, cancel_requested, KEYS[3], KEYS[4], KEYS[2],
        'never started', 'unstarted') then
      returned[#returned + 1] = id
    end
  end
end
return returned
