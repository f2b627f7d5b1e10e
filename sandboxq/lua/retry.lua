-- retry: send failed jobs back to `waiting` with a fresh attempt budget.
--
-- KEYS[1] failed   KEYS[2] wait   KEYS[3] seq   KEYS[4] marker   KEYS[5] events
--
-- ARGV[1] prefix   ARGV[2] now   ARGV[3] maxlen   (the head: include/common.lua)
-- ARGV[4] job_id: or "" for the oldest failed jobs   ARGV[5] limit
-- ARGV[6] by: who asked (recorded in the audit log)
-- ARGV[7] reset_steps: "1" to forget the job's durable steps (step.lua), so
--         it redoes them
--
-- The last error and traceback stay on the job for reference until it fails
-- again or completes. A failed id whose key holds no hash (quarantined: see
-- include/common.lua) stays failed, as there is no job to run (remove it),
-- and retrying the oldest looks past at most `limit` of them; an id whose
-- hash is gone leaves the set. Returns the ids moved (empty if the job is
-- not failed).
--!include common
--!include moves
local prefix, now, maxlen = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local id, limit, by, reset_steps = ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7] == '1'

local function send_back(job_id)
  local job_key = prefix .. 'job:' .. job_id
  redis.call('ZREM', KEYS[1], job_id)
  redis.call('HSET', job_key, 'attempts_made', 0, 'stalls', 0)
  redis.call('HDEL', job_key, 'finished_at', 'started_at')
  local action = 'retry'
  if reset_steps then
    local fields = {'step_count'}
    for _, field in ipairs(redis.call('HKEYS', job_key)) do
      if string.sub(field, 1, 5) == 'step:' then fields[#fields + 1] = field end
    end
    redis.call('HDEL', job_key, unpack(fields))
    action = 'retry (steps reset)'
  end
  make_waiting(prefix, job_key, job_id, now, false)
  audit(prefix, job_id, now, by, action)
  emit(KEYS[5], maxlen, 'waiting', job_id, 'from', 'retry')
end

-- Whether the failed id can be sent back (its key holds a hash); an id
-- whose hash is gone leaves the set.
local function retryable(job_id)
  local kind = job_type(prefix .. 'job:' .. job_id)
  if kind == 'none' then redis.call('ZREM', KEYS[1], job_id) end
  return kind == 'hash'
end

local moved = {}
if id ~= '' then
  if redis.call('ZSCORE', KEYS[1], id) and retryable(id) then
    send_back(id)
    moved[1] = id
  end
  return moved
end
-- The oldest first. What this call sends back (or drops) leaves the set, so
-- the next page starts after the corrupt ids left in front. At most `limit`
-- ids are passed over (corrupt or gone), so one call stays short.
local offset, passed = 0, 0
while #moved < limit and passed < limit do
  local page = redis.call('ZRANGE', KEYS[1], offset, offset + limit - #moved - 1)
  if #page == 0 then break end
  for _, job_id in ipairs(page) do
    if retryable(job_id) then
      send_back(job_id)
      moved[#moved + 1] = job_id
    else
      passed = passed + 1
      if redis.call('ZSCORE', KEYS[1], job_id) then offset = offset + 1 end
    end
  end
end
return moved
