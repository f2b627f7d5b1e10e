-- drain: remove jobs that have not started: waiting (grouped too), and
-- optionally delayed.
--
-- KEYS[1] wait   KEYS[2] delayed   KEYS[3] events
--
-- ARGV[1] prefix   ARGV[2] now   ARGV[3] maxlen   (the head: include/common.lua)
-- ARGV[4] include_delayed: "1" to include delayed jobs
-- ARGV[5] limit: jobs per call   ARGV[6] by: who asked ("" = no audit entry)
--
-- A flow child that its parent waits for counts as a failed child.
--
-- Returns how many jobs were removed; call again while it returns `limit`.
--!include common
--!include moves
--!include retention
--!include flow
--!include dependents
local prefix, now, maxlen, limit = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[5])
local removed = 0
local function take(set_key)
  local ids = redis.call('ZRANGE', set_key, 0, limit - removed - 1)
  for _, id in ipairs(ids) do delete_job(prefix, id, now, maxlen) end
  if #ids > 0 then redis.call('ZREM', set_key, unpack(ids)) end
  removed = removed + #ids
end
take(KEYS[1])
for _, group in ipairs(redis.call('SMEMBERS', prefix .. 'group_names')) do
  if removed >= limit then break end
  local before = removed
  take(prefix .. 'gwait:' .. group)
  incr(prefix .. 'gcount', before - removed)
end
if ARGV[4] == '1' and removed < limit then take(KEYS[2]) end
if removed > 0 then
  emit(KEYS[3], maxlen, 'drained', '', 'count', removed)
  if (ARGV[6] or '') ~= '' then
    audit(prefix, '', now, ARGV[6], 'drain (' .. removed .. ' removed)')
  end
end
return removed
