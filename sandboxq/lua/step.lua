-- step: record the results of durable steps (job.step) of running jobs.
--
-- KEYS[1] events
--
-- ARGV[1] prefix   ARGV[2] now (unused)   ARGV[3] maxlen
--         (the head: include/common.lua)
-- ARGV[4] token: the lease token   ARGV[5] max_steps: the most one job may record
-- ARGV[6..] steps: 3 values each: job id, step key, result (JSON)
--
-- A step is recorded only while this token holds the job's lease: a worker
-- that lost the job cannot record for it. Each lands in the job's own hash
-- as `step:<key>` = "<n>:<result>", n its place in the job's order
-- (`step_count`), so steps go wherever the job goes: retention deletes them
-- with it, and a retry with reset_steps deletes them (retry.lua).
--
-- Returns one status per step: "recorded"; "known" when the key holds a
-- result already (the same step sent again after its reply was lost: the
-- first result stays); "lost" when the job is not this token's (or its key
-- holds no hash); "full" when the job has recorded the most steps it may.
-- A `step_count` that is not a count counts as 0.
--!include common
local prefix, maxlen, token = ARGV[1], ARGV[3], ARGV[4]
local max_steps = tonumber(ARGV[5])
local statuses = {}
for i = 6, #ARGV, 3 do
  local id, key, result = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local job_key = prefix .. 'job:' .. id
  local field = 'step:' .. key
  local status
  local f = redis.pcall('HMGET', job_key, 'token', field, 'step_count')
  if is_error(f) or f[1] ~= token then
    status = 'lost'
  elseif f[2] then
    status = 'known'
  elseif stored_count(f[3]) >= max_steps then
    status = 'full'
  else
    local n = stored_count(f[3]) + 1
    redis.call('HSET', job_key, 'step_count', n, field, n .. ':' .. result)
    emit(KEYS[1], maxlen, 'step', id, 'key', key)
    status = 'recorded'
  end
  statuses[#statuses + 1] = status
end
return statuses
