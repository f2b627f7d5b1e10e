-- pause: stop (or resume) handing out the queue's jobs. Jobs can still be
-- added while paused; jobs already active run to the end.
--
-- KEYS[1] meta   KEYS[2] marker   KEYS[3] events
--
-- ARGV[1] prefix   ARGV[2] now   ARGV[3] maxlen   (the head: include/common.lua)
-- ARGV[4] paused: "1" to pause, "0" to resume   ARGV[5] by: who asked (audit log)
--
-- Returns 1 if the state changed, 0 if it already was as asked.
--!include common
--!include moves
local prefix, now, maxlen, by = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[5]
local changed
if ARGV[4] == '1' then
  changed = redis.call('HSETNX', KEYS[1], 'paused', '1')
  if changed == 1 then
    emit(KEYS[3], maxlen, 'paused', '')
    audit(prefix, '', now, by, 'pause')
  end
else
  changed = redis.call('HDEL', KEYS[1], 'paused')
  if changed == 1 then
    redis.call('ZADD', KEYS[2], 0, '0')
    emit(KEYS[3], maxlen, 'resumed', '')
    audit(prefix, '', now, by, 'resume')
  end
end
return changed
