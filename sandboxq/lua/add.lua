-- add: create jobs (one or a batch) and put each into `waiting` or `delayed`.
--
-- KEYS[1] id_counter   KEYS[2] seq   KEYS[3] wait   KEYS[4] delayed
-- KEYS[5] marker   KEYS[6] events
--
-- ARGV[1] prefix   ARGV[2] now   ARGV[3] maxlen   (the head: include/common.lua)
-- ARGV[4..] jobs: per job, job_id ("" = generate), priority, delay_ms,
--           dedupe_id ("" = none; else ttl_ms (0 = none), extend ("1"/"0")
--           and replace ("1"/"0") follow it), n, then n field/value pairs
--           written to the job hash as they are
--
-- Returns a flat array: per job its id and 1 if created, 0 if not: a custom
-- job id that exists already deduplicates (adding it again changes
-- nothing), and so does an open dedupe window, whose job's id comes back
-- (see include/add_jobs.lua; with replace, that job took the new fields).
--!include common
--!include add_jobs
local k = {id = KEYS[1], seq = KEYS[2], wait = KEYS[3], delayed = KEYS[4],
           marker = KEYS[5], events = KEYS[6]}
return add_jobs(ARGV[1], tonumber(ARGV[2]), ARGV[3], k, ARGV, 4)
