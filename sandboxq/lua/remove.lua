-- remove: delete one job that is not running.
--
-- KEYS[1] wait   KEYS[2] delayed   KEYS[3] active   KEYS[4] completed
-- KEYS[5] failed   KEYS[6] events   KEYS[7] waiting_children   KEYS[8] cancelled
-- KEYS[9] waiting_deps
--
-- ARGV[1] prefix   ARGV[2] now   ARGV[3] maxlen   (the head: include/common.lua)
-- ARGV[4] job_id   ARGV[5] by: who asked (kept in the queue's audit log)
--
-- A flow child that its parent still waits for counts as a failed child,
-- and an unfinished job others await (include/dependents.lua) as a failed
-- dependency.
-- A key that holds something other than a hash (quarantined: see
-- include/common.lua) is removed too: that is how a person clears it.
--
-- Returns 1 if removed, 0 if there is no such job, -1 if the job is active
-- (a worker holds its lease; remove it once it finishes).
--!include common
--!include moves
--!include retention
--!include flow
--!include dependents
local prefix, now, maxlen, id, by = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local job_key = prefix .. 'job:' .. id
local kind = job_type(job_key)
if kind == 'none' then return 0 end
if redis.call('ZSCORE', KEYS[3], id) then return -1 end
if kind == 'hash' then unwait(prefix, job_key, id) else redis.call('ZREM', KEYS[1], id) end
for k = 2, 5 do
  if k ~= 3 then redis.call('ZREM', KEYS[k], id) end
end
redis.call('ZREM', KEYS[7], id)
redis.call('ZREM', KEYS[8], id)
redis.call('ZREM', KEYS[9], id)
audit(prefix, id, now, by, 'remove')  -- the queue's audit log outlives the job
delete_job(prefix, id, now, maxlen)
emit(KEYS[6], maxlen, 'removed', id, 'by', by)
return 1
