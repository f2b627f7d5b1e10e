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
local prefix, now, maxlen = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local out = {}
local woke = false
local i = 4
while i <= #ARGV do
  local id, priority, delay = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local n = tonumber(ARGV[i + 3])
  local first, last = i + 4, i + 3 + 2 * n
  i = last + 1
  if id == '' then id = tostring(redis.call('INCR', KEYS[1])) end
  local job_key = prefix .. 'job:' .. id
  if redis.call('EXISTS', job_key) == 1 then
    out[#out + 1] = id
    out[#out + 1] = 0
  else
    local seq = next_seq(KEYS[2])
    redis.call('HSET', job_key, 'priority', priority, 'seq', seq,
      'created_at', num(now), 'attempts_made', 0, 'stalls', 0,
      unpack(ARGV, first, last))
    if delay > 0 then
      redis.call('ZADD', KEYS[4], num(now + delay), id)
      redis.call('HSET', job_key, 'state', 'delayed')
      emit(KEYS[6], maxlen, 'added', id, 'state', 'delayed', 'delay_ms', num(delay))
    else
      redis.call('ZADD', KEYS[3], wait_score(priority, seq), id)
      redis.call('HSET', job_key, 'state', 'waiting')
      emit(KEYS[6], maxlen, 'added', id, 'state', 'waiting')
    end
    woke = true
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end
-- One marker per call wakes a blocked worker: for a new waiting job, or so it
-- recomputes how long to sleep until the earliest delayed job.
if woke then redis.call('ZADD', KEYS[5], 0, '0') end
return out
