-- obliterate: delete a queue's jobs and keys, in bounded steps.
--
-- KEYS[1] active   KEYS[2..] sets, others: every other key of the queue,
--         the sets of jobs first, as many as set_count says
--
-- ARGV[1] prefix   ARGV[2] now   ARGV[3] maxlen   (the head: include/common.lua;
--         maxlen for the events of flow parents in other queues of the
--         group, whose children this deletes)
-- ARGV[4] force: "1" to go ahead even with active jobs
-- ARGV[5] set_count: how many of KEYS[2..] are job sets
-- ARGV[6] limit: jobs per call
--
-- Returns -1 if jobs are active and force was not given, else how many jobs
-- were deleted in this step; 0 means the queue is gone.
--!include common
--!include moves
--!include retention
--!include flow
--!include dependents
local prefix, now, maxlen = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local force, nsets, limit = ARGV[4] == '1', tonumber(ARGV[5]), tonumber(ARGV[6])
if not force and redis.call('ZCARD', KEYS[1]) > 0 then return -1 end
local removed = 0
local groups = redis.call('SMEMBERS', prefix .. 'group_names')
local sets = {}
for k = 1, nsets + 1 do sets[#sets + 1] = KEYS[k] end
for _, group in ipairs(groups) do sets[#sets + 1] = prefix .. 'gwait:' .. group end
for _, set_key in ipairs(sets) do
  if removed >= limit then return removed end
  local ids = redis.call('ZRANGE', set_key, 0, limit - removed - 1)
  for _, id in ipairs(ids) do
    -- (its dedupe window goes too, even one with a ttl: so does the queue)
    release_dedupe(prefix, id, redis.pcall('HGET', prefix .. 'job:' .. id, 'dedupe_id'), true)
    delete_job(prefix, id, now, maxlen)
  end
  if #ids > 0 then redis.call('ZREM', set_key, unpack(ids)) end
  removed = removed + #ids
end
if removed == 0 then
  for _, group in ipairs(groups) do
    redis.call('DEL', prefix .. 'gwait:' .. group, prefix .. 'glimiter:' .. group)
  end
  redis.call('DEL', unpack(KEYS))
end
return removed
