-- clean: retention trimming of one set of jobs (completed, failed, delayed or
-- waiting): remove jobs older than an age and/or beyond a count.
--
-- KEYS[1] the set   KEYS[2] events
--
-- ARGV[1] key prefix   ARGV[2] now (ms)   ARGV[3] max count (-1 = any)
-- ARGV[4] max age (ms, -1 = any)   ARGV[5] limit (jobs per call)
-- ARGV[6] events maxlen   ARGV[7] who asked ("" = no audit entry)
-- ARGV[8] the state's name, for the audit entry
--
-- For finished sets the score is the finish time, so "age" is time since
-- finishing. Other sets are not ordered by time (waiting: priority and
-- sequence; delayed: due time), so pass -1 as the age for them: Queue.clean
-- refuses older_than there. Waiting jobs with a group wait in their group's
-- own set: the count applies to the ungrouped set and to each group's.
-- Returns how many jobs were removed; call again while it returns `limit`.
--!include common
--!include retention
--!include flow
local prefix, now, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[5])
local max_count, max_age = tonumber(ARGV[3]), tonumber(ARGV[4])
local removed = trim_finished(prefix, KEYS[1], now, max_count, max_age, limit, ARGV[6])
if ARGV[8] == 'waiting' then
  for _, group in ipairs(redis.call('SMEMBERS', prefix .. 'group_names')) do
    if removed >= limit then break end
    local n = trim_finished(prefix, prefix .. 'gwait:' .. group, now, max_count, max_age,
      limit - removed, ARGV[6])
    if n > 0 then incr(prefix .. 'gcount', -n) end
    removed = removed + n
  end
end
if removed > 0 then
  emit(KEYS[2], ARGV[6], 'cleaned', '', 'count', removed)
  if (ARGV[7] or '') ~= '' then
    audit(prefix, '', now, ARGV[7], 'clean ' .. ARGV[8] .. ' (' .. removed .. ' removed)')
  end
end
return removed
