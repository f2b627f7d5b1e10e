-- add_dependent: add one job that waits for jobs that exist already (its
-- dependencies), in `waiting-deps` until every one has finished (see
-- include/dependents.lua for the keys and how a finishing job tells it).
--
-- KEYS[1] id_counter   KEYS[2] waiting_deps   KEYS[3] events
--
-- ARGV[1] prefix   ARGV[2] now   ARGV[3] maxlen   (the head: include/common.lua)
-- ARGV[4] on_failure: "fail", "run" or "cancel" (what a failed dependency does)
-- ARGV[5] dependency_count
-- ARGV[6..] dependencies, job: per dependency its key prefix, queue name
--           and job id (distinct; every prefix of this queue's hash tag,
--           checked again here); then the job as include/add_jobs.lua reads
--           one, with delay_ms 0 and no dedupe id
--
-- Every dependency is read before anything is written: one that does not
-- exist (or whose key holds no hash, or whose dependents key no set)
-- refuses the add, which writes nothing and returns why, naming it. A completed dependency counts at once
-- (its result is recorded), a failed or cancelled one counts as failed at
-- once: on_failure "fail" or "cancel" ends the new job so now. A job id
-- given that exists already adds nothing (deduplication). No cycle can
-- form: a job's dependencies exist before it.
--
-- Returns {id, 1 if created else 0, the new job's state}, or {"", -1, why}
-- when refused.
--!include common
--!include moves
--!include retention
--!include flow
--!include dependents
local prefix, now, maxlen = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local on_failure, count = ARGV[4], tonumber(ARGV[5])
local at = 6 + 3 * count
local job_id, priority, n = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 4])
local first, last = at + 5, at + 4 + 2 * n

if job_id ~= '' and redis.call('EXISTS', prefix .. 'job:' .. job_id) == 1 then
  return {job_id, 0, ''}
end

-- Reads: every dependency, and the id counter.
local tag = string.match(prefix, '^[^{]*{[^}]*}')
local completed, failed, pending = {}, {}, {}
for i = 6, at - 1, 3 do
  local dprefix, ref, did = ARGV[i], ARGV[i + 1] .. ':' .. ARGV[i + 2], ARGV[i + 2]
  if string.sub(dprefix, 1, #tag) ~= tag then
    error('dependency ' .. ref .. ' is not in a queue of the hash tag ' .. tag .. '}')
  end
  local f = redis.pcall('HMGET', dprefix .. 'job:' .. did, 'state', 'result', 'error')
  if is_error(f) then
    return {'', -1, 'dependency ' .. ref .. ': its key holds no job (' .. f.err .. ')'}
  end
  if not f[1] then return {'', -1, 'unknown dependency ' .. ref .. ': no such job'} end
  if f[1] == 'completed' then
    completed[#completed + 1] = {ref, f[2] or 'null'}
  elseif f[1] == 'failed' or f[1] == 'cancelled' then
    local message, text = dependency_failure(ref, f[1], f[3], false)
    failed[#failed + 1] = {ref, text, message}
  else
    local set_key = dprefix .. 'dependents:' .. did
    if is_error(redis.pcall('SCARD', set_key)) then
      return {'', -1, 'dependency ' .. ref .. ': its dependents key ' .. set_key
        .. ' holds no set; delete it to add jobs that depend on it'}
    end
    pending[#pending + 1] = {ref, dprefix, did}
  end
end
if job_id == '' then
  local next_id = redis.pcall('INCR', KEYS[1])
  if is_error(next_id) then
    error('the job id counter ' .. KEYS[1] .. ' holds no integer (' .. next_id.err .. '); set '
      .. 'it to the highest job id to add jobs again')
  end
  job_id = tostring(next_id)
end

-- Writes.
local id, job_key = job_id, prefix .. 'job:' .. job_id
redis.call('DEL', prefix .. 'awaits:' .. id, prefix .. 'deps:' .. id, prefix .. 'ignored:' .. id)
redis.call('HSET', job_key, 'priority', priority, 'created_at', num(now),
  'on_dependency_failure', on_failure, unpack(ARGV, first, last))
for _, done in ipairs(completed) do
  redis.call('HSET', prefix .. 'deps:' .. id, done[1], done[2])
end
if #failed > 0 and on_failure ~= 'run' then
  emit(KEYS[3], maxlen, 'added', id, 'state', 'waiting-deps')
  end_dependent(prefix, job_key, id, on_failure, failed[1][3], now, maxlen)
  return {id, 1, on_failure == 'cancel' and 'cancelled' or 'failed'}
end
for _, failure in ipairs(failed) do
  redis.call('HSET', prefix .. 'ignored:' .. id, failure[1], failure[2])
end
if #pending == 0 then
  make_waiting(prefix, job_key, id, now, false)
  emit(KEYS[3], maxlen, 'added', id, 'state', 'waiting')
  return {id, 1, 'waiting'}
end
local member = prefix .. '|' .. id
for _, dependency in ipairs(pending) do
  local ref, dprefix, did = dependency[1], dependency[2], dependency[3]
  redis.call('HSET', prefix .. 'awaits:' .. id, ref, dprefix)
  redis.call('SADD', dprefix .. 'dependents:' .. did, member)
  redis.call('HSET', dprefix .. 'job:' .. did, 'awaited_as', ref)
end
redis.call('HSET', job_key, 'state', 'waiting-deps')
redis.call('ZADD', KEYS[2], num(now), id)
emit(KEYS[3], maxlen, 'added', id, 'state', 'waiting-deps')
return {id, 1, 'waiting-deps'}
