-- A schedule's next occurrence (schedule.lua, fire_schedule.lua): its time
-- (ms) is its score in the schedule_times zset; -1 means it has none (it is
-- finished), and then it leaves the zset, so no worker looks at it again.
-- Needs: common.
local function set_next_time(times_key, key, next_ms)
  if next_ms >= 0 then
    redis.call('ZADD', times_key, num(next_ms), key)
  else
    redis.call('ZREM', times_key, key)
  end
end
