-- retry: send failed jobs back to `waiting` with a fresh attempt budget.
--
-- KEYS[1] failed   KEYS[2] wait   KEYS[3] seq   KEYS[4] marker   KEYS[5] events
--
-- ARGV[1] key prefix   ARGV[2] events maxlen
-- ARGV[3] job id, or "" for the oldest failed jobs   ARGV[4] limit
-- ARGV[5] now (ms)   ARGV[6] who asked (recorded in the audit log)
-- ARGV[7] "1" to forget the job's durable steps (step.lua), so it redoes them
--
-- The last error and traceback stay on the job for reference until it fails
-- again or completes. Returns the ids moved (empty if the job is not failed).
--!include common
local prefix, maxlen, id, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local now, by, reset_steps = tonumber(ARGV[5]), ARGV[6], ARGV[7] == '1'

local ids
if id ~= '' then
  if not redis.call('ZSCORE', KEYS[1], id) then return {} end
  ids = {id}
else
  ids = redis.call('ZRANGE', KEYS[1], 0, limit - 1)
end
for _, job_id in ipairs(ids) do
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
return ids
