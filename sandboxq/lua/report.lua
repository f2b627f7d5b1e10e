-- report: record progress and log lines that running jobs sent, in a batch.
--
-- KEYS[1] events
--
-- ARGV[1] key prefix   ARGV[2] lease token
-- ARGV[3] events maxlen   ARGV[4] log lines kept per job
-- then per report 3 values: job id, kind ("progress" or "log"), value
--
-- Reports for a job this token no longer holds are dropped. Returns how many
-- were recorded.
--!include common
local prefix, token, maxlen, keep_logs = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local recorded = 0
for i = 5, #ARGV, 3 do
  local id, kind, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local job_key = prefix .. 'job:' .. id
  local holder = redis.call('HGET', job_key, 'token')
  if holder == token then
    if kind == 'progress' then
      redis.call('HSET', job_key, 'progress', value)
      emit(KEYS[1], maxlen, 'progress', id, 'progress', value)
    else
      local logs_key = prefix .. 'logs:' .. id
      redis.call('RPUSH', logs_key, value)
      redis.call('LTRIM', logs_key, -keep_logs, -1)
    end
    recorded = recorded + 1
  end
end
return recorded
