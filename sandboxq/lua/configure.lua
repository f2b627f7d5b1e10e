-- configure: change a queue's flow-control settings (meta fields) and wake
-- the workers so they apply them at once.
--
-- KEYS[1] meta   KEYS[2] marker   KEYS[3] events
--
-- ARGV[1] prefix   ARGV[2] now (unused)   ARGV[3] maxlen
--         (the head: include/common.lua)
-- ARGV[4..] settings: field/value pairs; an empty value clears the field.
--           Fields: rl_max, rl_window_ms, concurrency, grl_max,
--           grl_window_ms, gconcurrency, aging_ms, rl_until
--
-- Changing aging_ms rescores every waiting job (the score formula depends on
-- it; see wait_score); one whose key holds no hash keeps its score (fetch.lua
-- sets it aside when its turn comes). Returns the number of jobs rescored.
--!include common
local prefix, maxlen = ARGV[1], ARGV[3]
local old_aging = aging_ms(prefix)
local changes = {}
for i = 4, #ARGV, 2 do
  local field, value = ARGV[i], ARGV[i + 1]
  if value == '' then
    redis.call('HDEL', KEYS[1], field)
  else
    redis.call('HSET', KEYS[1], field, value)
  end
  changes[#changes + 1] = field
  changes[#changes + 1] = value
end
aging_cache[prefix] = nil
local rescored = 0
if aging_ms(prefix) ~= old_aging then
  local sets = {prefix .. 'wait'}
  for _, group in ipairs(redis.call('SMEMBERS', prefix .. 'group_names')) do
    sets[#sets + 1] = prefix .. 'gwait:' .. group
  end
  for _, set_key in ipairs(sets) do
    for _, id in ipairs(redis.call('ZRANGE', set_key, 0, -1)) do
      local f = redis.pcall('HMGET', prefix .. 'job:' .. id, 'priority', 'seq', 'waiting_since')
      if not is_error(f) then
        redis.call('ZADD', set_key, wait_score(prefix, f[1], f[2], f[3]), id)
        rescored = rescored + 1
      end
    end
  end
end
redis.call('ZADD', KEYS[2], 0, '0')
emit(KEYS[3], maxlen, 'configured', '', unpack(changes))
return rescored
