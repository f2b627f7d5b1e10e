-- pause: stop (or resume) handing out the queue's jobs. Jobs can still be
-- added while paused; jobs already active run to the end.
--
-- KEYS[1] meta   KEYS[2] marker   KEYS[3] events
--
-- ARGV[1] "1" to pause, "0" to resume   ARGV[2] events maxlen
-- ARGV[3] key prefix   ARGV[4] now (ms)   ARGV[5] who asked (audit log)
--
-- Returns 1 if the state changed, 0 if it already was as asked.
--!include common
local changed
if ARGV[1] == '1' then
  changed = redis.call('HSETNX', KEYS[1], 'paused', '1')
  if changed == 1 then
    emit(KEYS[3], ARGV[2], 'paused', '')
    audit(ARGV[3], '', tonumber(ARGV[4]), ARGV[5], 'pause')
  end
else
  changed = redis.call('HDEL', KEYS[1], 'paused')
  if changed == 1 then
    redis.call('ZADD', KEYS[2], 0, '0')
    emit(KEYS[3], ARGV[2], 'resumed', '')
    audit(ARGV[3], '', tonumber(ARGV[4]), ARGV[5], 'resume')
  end
end
return changed
