-- fetch: promote due delayed jobs, then lease up to `count` waiting jobs.
--
-- KEYS[1] wait     KEYS[2] delayed   KEYS[3] active   KEYS[4] meta
-- KEYS[5] marker   KEYS[6] events    KEYS[7] seq counter
--
-- ARGV[1] key prefix   ARGV[2] now (ms)   ARGV[3] count   ARGV[4] lease token
-- ARGV[5] lease (ms)   ARGV[6] events maxlen
--
-- A lease is the token stored on the job plus a deadline, the job's score in
-- `active`. Renewing moves the deadline; a deadline in the past means stalled.
--
-- Returns {jobs, next_due}: jobs is a flat array of (id, hash as a flat
-- field/value array) per leased job; next_due is the due time (ms) of the
-- earliest delayed job, or -1 when there is none.
--!include common
--!include promote
--!include retention
--!include flow
local prefix, now, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local token, lease, maxlen = ARGV[4], tonumber(ARGV[5]), ARGV[6]

promote_due(prefix, KEYS[2], KEYS[1], KEYS[7], KEYS[5], KEYS[6], maxlen, now, 1000)

local jobs = {}
if count > 0 and redis.call('HEXISTS', KEYS[4], 'paused') == 0 then
  local popped = redis.call('ZPOPMIN', KEYS[1], count)
  local deadline = num(now + lease)
  for j = 1, #popped, 2 do
    local id = popped[j]
    local job_key = prefix .. 'job:' .. id
    if redis.call('EXISTS', job_key) == 1 then
      redis.call('ZADD', KEYS[3], deadline, id)
      redis.call('HSET', job_key, 'state', 'active', 'started_at', num(now), 'token', token)
      emit(KEYS[6], maxlen, 'active', id)
      local fields = redis.call('HGETALL', job_key)
      if redis.call('HEXISTS', job_key, 'pending') == 1 then  -- a flow parent
        fields[#fields + 1] = 'children'
        fields[#fields + 1] = children_json(prefix, id)
      end
      jobs[#jobs + 1] = id
      jobs[#jobs + 1] = fields
    end
  end
  -- More work left: pass the wake-up on to the next blocked worker.
  if redis.call('ZCARD', KEYS[1]) > 0 then redis.call('ZADD', KEYS[5], 0, '0') end
end

local next_due = -1
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #first > 0 then next_due = tonumber(first[2]) end
return {jobs, next_due}
