-- schedule: create, update or delete a schedule (a repeatable job).
--
-- KEYS[1] schedules (hash: key -> spec JSON)
-- KEYS[2] schedule_times (zset: key -> next occurrence, ms)
-- KEYS[3] events   KEYS[4] schedule_counts (hash: key -> occurrences so far)
-- KEYS[5] marker (a set schedule wakes a blocked worker to look at it)
--
-- ARGV[1] prefix (unused)   ARGV[2] now (unused)   ARGV[3] maxlen
--         (the head: include/common.lua)
-- ARGV[4] action: "set" or "del"   ARGV[5] key: the schedule's
-- ARGV[6] spec: JSON (read by "set" only)
-- ARGV[7] next_ms: the next occurrence (ms; -1 = none; read by "set" only)
--
-- "set" on an existing key replaces its spec and next time (its count of
-- occurrences so far stays): calling it again updates the schedule and never
-- duplicates it. Returns 1 if the key was new
-- ("set") or existed ("del"), else 0.
--!include common
--!include schedule_times
local key, maxlen = ARGV[5], ARGV[3]
if ARGV[4] == 'del' then
  redis.call('ZREM', KEYS[2], key)
  redis.call('HDEL', KEYS[4], key)
  local existed = redis.call('HDEL', KEYS[1], key)
  if existed == 1 then emit(KEYS[3], maxlen, 'unscheduled', '', 'schedule', key) end
  return existed
end
local created = redis.call('HSET', KEYS[1], key, ARGV[6])
local next_ms = tonumber(ARGV[7])
set_next_time(KEYS[2], key, next_ms)
redis.call('ZADD', KEYS[5], 0, '0')
emit(KEYS[3], maxlen, 'scheduled', '', 'schedule', key, 'next_ms', num(next_ms))
return created
