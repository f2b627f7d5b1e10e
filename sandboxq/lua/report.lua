-- report: record progress and log lines that running jobs sent, in a batch.
--
-- KEYS[1] events
--
-- ARGV[1] prefix   ARGV[2] now (unused)   ARGV[3] maxlen
--         (the head: include/common.lua)
-- ARGV[4] token: the lease token   ARGV[5] keep_logs: log lines kept per job
-- ARGV[6..] reports: 3 values each: job id, kind ("progress" or "log"), value
--
-- Reports for a job this token no longer holds (or whose key holds no hash)
-- are dropped, and so is a log line whose log key holds no list. Returns
-- how many were recorded.
--!include common
local prefix, maxlen, token, keep_logs = ARGV[1], ARGV[3], ARGV[4], tonumber(ARGV[5])
local recorded = 0
for i = 6, #ARGV, 3 do
  local id, kind, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local job_key = prefix .. 'job:' .. id
  local holder = redis.pcall('HGET', job_key, 'token')
  if holder == token then
    if kind == 'progress' then
      redis.call('HSET', job_key, 'progress', value)
      emit(KEYS[1], maxlen, 'progress', id, 'progress', value)
      recorded = recorded + 1
    else
      local logs_key = prefix .. 'logs:' .. id
      if not is_error(redis.pcall('RPUSH', logs_key, value)) then
        redis.call('LTRIM', logs_key, -keep_logs, -1)
        recorded = recorded + 1
      end
    end
  end
end
return recorded
