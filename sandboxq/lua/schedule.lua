-- schedule: create, update or delete a schedule (a repeatable job).
--
-- KEYS[1] schedules (hash: key -> spec JSON)
-- KEYS[2] schedule times (zset: key -> next occurrence, ms)
-- KEYS[3] events   KEYS[4] schedule counts (hash: key -> occurrences so far)
-- KEYS[5] marker (a set schedule wakes a blocked worker to look at it)
--
-- ARGV[1] "set" or "del"   ARGV[2] schedule key   ARGV[3] events maxlen
-- ARGV[4] spec JSON ("set")   ARGV[5] next occurrence ms ("set"; -1 = none)
--
-- "set" on an existing key replaces its spec and next time (its count of
-- occurrences so far stays): calling it again updates the schedule and never
-- duplicates it. Returns 1 if the key was new
-- ("set") or existed ("del"), else 0.
--!include common
local key = ARGV[2]
if ARGV[1] == 'del' then
  redis.call('ZREM', KEYS[2], key)
  redis.call('HDEL', KEYS[4], key)
  local existed = redis.call('HDEL', KEYS[1], key)
  if existed == 1 then emit(KEYS[3], ARGV[3], 'unscheduled', '', 'schedule', key) end
  return existed
end
local created = redis.call('HSET', KEYS[1], key, ARGV[4])
local next_ms = tonumber(ARGV[5])
if next_ms >= 0 then
  redis.call('ZADD', KEYS[2], num(next_ms), key)
else
  redis.call('ZREM', KEYS[2], key)
end
redis.call('ZADD', KEYS[5], 0, '0')
emit(KEYS[3], ARGV[3], 'scheduled', '', 'schedule', key, 'next_ms', num(next_ms))
return created
