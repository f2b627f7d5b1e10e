-- add: create jobs (one or a batch) and put each into `waiting` or `delayed`.
--
-- KEYS[1] id counter        KEYS[2] seq counter     KEYS[3] wait (zset)
-- KEYS[4] delayed (zset)    KEYS[5] marker (zset)   KEYS[6] events (stream)
--
-- ARGV[1] key prefix "sq:{name}:"   ARGV[2] now (ms)   ARGV[3] events maxlen
-- then per job: job_id ("" = generate), priority, delay_ms, n, then n
--               field/value pairs written to the job hash as they are.
--
-- Returns a flat array: per job its id and 1 if created, 0 if the id existed
-- (a custom job id deduplicates: adding it again changes nothing).
--!include common
--!include add_jobs
local k = {id = KEYS[1], seq = KEYS[2], wait = KEYS[3], delayed = KEYS[4],
           marker = KEYS[5], events = KEYS[6]}
return add_jobs(ARGV[1], tonumber(ARGV[2]), ARGV[3], k, ARGV, 4)
