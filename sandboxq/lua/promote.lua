-- promote: move delayed jobs into `waiting`: either every job that is due,
-- or one named job at once (an operator's "run it now").
--
-- KEYS[1] delayed   KEYS[2] wait   KEYS[3] seq   KEYS[4] marker   KEYS[5] events
--
-- ARGV[1] prefix   ARGV[2] now   ARGV[3] maxlen   (the head: include/common.lua)
-- ARGV[4] job_id: or "" for every due job   ARGV[5] limit: jobs per call
-- ARGV[6] by: who asked, for one named job (recorded in the audit log)
--
-- A job whose key holds no hash goes to `failed` instead (quarantine, in
-- include/common.lua). Returns how many jobs were promoted.
--!include common
--!include moves
--!include promote
local prefix, now, maxlen, id = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
if id == '' then
  return promote_due(prefix, KEYS[1], KEYS[5], maxlen, now, tonumber(ARGV[5]))
end
if redis.call('ZREM', KEYS[1], id) == 0 then return 0 end
local job_key = prefix .. 'job:' .. id
if not make_waiting(prefix, job_key, id, now, false) then
  quarantine(prefix, id, now, KEYS[5], maxlen)
  return 0
end
audit(prefix, id, now, ARGV[6] or '', 'promote')
emit(KEYS[5], maxlen, 'waiting', id, 'from', 'promoted')
return 1
