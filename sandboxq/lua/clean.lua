-- clean: retention trimming of one set of jobs (completed, failed, delayed or
-- waiting): remove jobs older than an age and/or beyond a count.
--
-- KEYS[1] state_set: the state's set   KEYS[2] events
--
-- ARGV[1] prefix   ARGV[2] now   ARGV[3] maxlen   (the head: include/common.lua)
-- ARGV[4] max_count: -1 = any   ARGV[5] max_age_ms: -1 = any
-- ARGV[6] limit: jobs per call   ARGV[7] by: who asked ("" = no audit entry)
-- ARGV[8] state: the set's name, for the audit entry
--
-- For finished sets the score is the finish time, so "age" is time since
-- finishing. Other sets are not ordered by time (waiting: priority and
-- sequence; delayed: due time), so pass -1 as the age for them: Queue.clean
-- refuses older_than there. Waiting jobs with a group wait in their group's
-- own set: the count applies to the ungrouped set and to each group's.
-- Returns how many jobs were removed; call again while it returns `limit`.
--!include common
--!include moves
--!include retention
--!include flow
--!include dependents
local prefix, now, maxlen = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local max_count, max_age, limit = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local by, state = ARGV[7], ARGV[8]
local removed = trim_finished(prefix, KEYS[1], now, max_count, max_age, limit, maxlen)
if state == 'waiting' then
  for _, group in ipairs(redis.call('SMEMBERS', prefix .. 'group_names')) do
    if removed >= limit then break end
    local n = trim_finished(prefix, prefix .. 'gwait:' .. group, now, max_count, max_age,
      limit - removed, maxlen)
    if n > 0 then incr(prefix .. 'gcount', -n) end
    removed = removed + n
  end
end
if removed > 0 then
  emit(KEYS[2], maxlen, 'cleaned', '', 'count', removed)
  if (by or '') ~= '' then
    audit(prefix, '', now, by, 'clean ' .. state .. ' (' .. removed .. ' removed)')
  end
end
return removed
