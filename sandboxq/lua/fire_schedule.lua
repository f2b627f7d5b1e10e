-- fire_schedule: enqueue a schedule's due occurrences exactly once.
--
-- KEYS[1] schedule_counts (hash: key -> occurrences enqueued so far)
-- KEYS[2] schedule_times (zset)
-- KEYS[3] id_counter   KEYS[4] seq   KEYS[5] wait   KEYS[6] delayed
-- KEYS[7] marker       KEYS[8] events
--
-- ARGV[1] prefix   ARGV[2] now   ARGV[3] maxlen   (the head: include/common.lua)
-- ARGV[4] key: the schedule's
-- ARGV[5] expected_next: the next time (ms) the caller read
-- ARGV[6] new_next: the new next time (ms; -1 = the schedule is finished)
-- ARGV[7] counted: how many occurrences this counts toward the schedule's limit
-- ARGV[8..] jobs: as in add.lua (one per occurrence, with ids derived from
--           the occurrence time, so an occurrence is one job whoever fires it)
--
-- Any number of worker parents may try to fire the same schedule: only the
-- one whose expected_next still matches the stored next time does; the others get
-- 0 and change nothing. Returns the number of jobs created, or -1 if the
-- schedule moved on (fired elsewhere, updated or deleted).
--!include common
--!include add_jobs
--!include schedule_times
local key, expected = ARGV[4], ARGV[5]
local stored = redis.call('ZSCORE', KEYS[2], key)
if not stored or num(tonumber(stored)) ~= num(tonumber(expected)) then return -1 end
set_next_time(KEYS[2], key, tonumber(ARGV[6]))
local k = {id = KEYS[3], seq = KEYS[4], wait = KEYS[5], delayed = KEYS[6],
           marker = KEYS[7], events = KEYS[8]}
local out = add_jobs(ARGV[1], tonumber(ARGV[2]), ARGV[3], k, ARGV, 8)
local created = 0
for i = 2, #out, 2 do created = created + out[i] end
if tonumber(ARGV[7]) > 0 then
  -- A stored count that is not an integer restarts from 0.
  hincr(KEYS[1], key, tonumber(ARGV[7]))
end
return created
