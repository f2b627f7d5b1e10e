-- cancel: stop one job for good, at a person's request. Never retried.
--
-- KEYS[1] wait   KEYS[2] delayed   KEYS[3] active   KEYS[4] waiting_children
-- KEYS[5] cancelled   KEYS[6] cancel_requests   KEYS[7] events
-- KEYS[8] given_up (where an old version's hash named `cancelled` moves)
-- KEYS[9] waiting_deps
--
-- ARGV[1] prefix   ARGV[2] now   ARGV[3] maxlen   (the head: include/common.lua)
-- ARGV[4] job_id   ARGV[5] by: who asked   ARGV[6] reason: why ("" = not said)
-- ARGV[7] keep_children: keep its flow children ("1") or cancel them too ("0")
-- ARGV[8] queue_name: how the job's children name its queue ("queue:id")
--
-- A waiting, delayed, waiting-children or waiting-deps job moves to
-- `cancelled` now (a flow parent counts it as a child that failed for good,
-- and the jobs that await it (include/dependents.lua) as a failed dependency). An active job
-- gets a request (include/cancel.lua): the worker holding it stops its
-- processes (SIGTERM, then SIGKILL after its kill grace) and settles it as
-- cancelled; if that worker died, stalled recovery does. Both are audited
-- (the job's audit list and the queue's audit stream) with the reason.
--
-- Unless keep_children is "1", a flow parent's unfinished children are cancelled
-- with it, the same way, and theirs, down the whole flow: each with its own
-- audit entry and event, its reason saying "its flow parent <queue:id> was
-- cancelled". The parent goes first, so no child counts against it. Its
-- children are listed in `children:<id>` (add_flow.lua), each with its key
-- prefix, in this queue or another of its hash tag: a prefix outside the
-- hash tag of `prefix` is skipped, never touched.
--
-- Returns "cancelled", "cancelling" (active: its worker will stop it; also
-- when it was asked before), "finished:<state>" when there is nothing to
-- cancel (completed, failed, cancelled), "missing" when there is no such
-- job, or "corrupt" when its key holds something other than a hash (remove
-- it instead). Nothing is written (nor audited) in the last three cases.
--!include common
--!include moves
--!include retention
--!include flow
--!include dependents
--!include cancel
local prefix, now, maxlen, id = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local by, reason = ARGV[5], clip(ARGV[6], EVENT_TEXT_BYTES)
local keep_children, queue_name = ARGV[7] == '1', ARGV[8]

-- Cancel one job of the queue whose keys are `k`: "cancelled",
-- "cancelling", "finished:<state>", "missing" or "corrupt", as the script
-- returns.
local function cancel_job(k, job_prefix, job_id, why)
  local job_key = job_prefix .. 'job:' .. job_id
  local kind = job_type(job_key)
  if kind == 'none' then return 'missing' end
  if kind ~= 'hash' then return 'corrupt' end
  claim_cancelled_key(k.cancelled, k.given_up)
  local said = ''
  if why ~= '' then said = ': ' .. why end

  if redis.call('ZSCORE', k.active, job_id) then
    if redis.call('HEXISTS', job_key, 'cancel_requested_at') == 1 then return 'cancelling' end
    redis.call('HSET', job_key, 'cancel_requested_at', num(now), 'cancelled_by', by,
      'cancel_reason', why)
    redis.call('ZADD', k.cancel_requests, num(now), job_id)
    audit(job_prefix, job_id, now, by, 'cancel requested' .. said)
    emit(k.events, maxlen, 'cancel-requested', job_id, 'by', by, 'reason', why)
    return 'cancelling'
  end

  local state = redis.call('HGET', job_key, 'state')
  if state == 'waiting' then
    unwait(job_prefix, job_key, job_id)
  elseif state == 'delayed' then
    redis.call('ZREM', k.delayed, job_id)
  elseif state == 'waiting-children' then
    redis.call('ZREM', k.waiting_children, job_id)
  elseif state == 'waiting-deps' then
    redis.call('ZREM', k.waiting_deps, job_id)
  else
    return 'finished:' .. (state or '')
  end
  redis.call('HSET', job_key, 'cancelled_by', by, 'cancel_reason', why)
  audit(job_prefix, job_id, now, by, 'cancel' .. said)
  return cancel_for_good(job_prefix, job_key, job_id, now, maxlen, k.cancelled,
    k.cancel_requests, k.events, '', '')
end

-- The keys cancel_job needs, of the queue whose key prefix is `p`.
local function keys_of(p)
  return {active = p .. 'active', delayed = p .. 'delayed',
    waiting_children = p .. 'waiting_children', waiting_deps = p .. 'waiting_deps',
    cancelled = p .. 'cancelled',
    cancel_requests = p .. 'cancel_requests', events = p .. 'events', given_up = p .. 'given_up'}
end

-- A job's flow children, as add_flow.lua listed them: {ref, key prefix} each
-- (none when the list is not a hash: something else wrote it).
local function children_of(job_prefix, job_id)
  local flat = redis.pcall('HGETALL', job_prefix .. 'children:' .. job_id)
  local children = {}
  if is_error(flat) then return children end
  for i = 1, #flat, 2 do children[#children + 1] = {flat[i], flat[i + 1]} end
  return children
end

-- Cancel the unfinished jobs of the flow under a cancelled parent, level by
-- level. Finished children are left as they are, but their own children are
-- looked at (a failed parent's children may still run). Each job's children
-- are read before it is cancelled: retention may delete it, and them with
-- it, as it settles. `seen` stops lists that loop (written by something
-- else) from looping here.
local function cancel_children(children, parent_ref)
  local hash_tag = string.match(prefix, '^[^{]*{[^}]*}')
  local levels, seen, next_level = {{children, parent_ref}}, {}, 1
  while levels[next_level] do
    local level = levels[next_level]
    next_level = next_level + 1
    local why = 'its flow parent ' .. level[2] .. ' was cancelled'
    if reason ~= '' then why = clip(why .. ': ' .. reason, EVENT_TEXT_BYTES) end
    for _, child in ipairs(level[1]) do
      local ref, child_prefix = child[1], child[2]
      local child_id = string.match(ref, ':([^:]+)$')
      local child_key = child_id and child_prefix .. 'job:' .. child_id
      if child_key and hash_tag and string.sub(child_prefix, 1, #hash_tag) == hash_tag
          and not seen[child_key] then
        seen[child_key] = true
        local grandchildren = children_of(child_prefix, child_id)
        cancel_job(keys_of(child_prefix), child_prefix, child_id, why)
        if #grandchildren > 0 then levels[#levels + 1] = {grandchildren, ref} end
      end
    end
  end
end

local root_keys = {active = KEYS[3], delayed = KEYS[2], waiting_children = KEYS[4],
  cancelled = KEYS[5], cancel_requests = KEYS[6], events = KEYS[7], given_up = KEYS[8],
  waiting_deps = KEYS[9]}
local children, ref = {}, nil
if not keep_children and job_type(prefix .. 'job:' .. id) == 'hash' then
  children = children_of(prefix, id)
  ref = redis.call('HGET', prefix .. 'job:' .. id, 'ref') or (queue_name .. ':' .. id)
end
local status = cancel_job(root_keys, prefix, id, reason)
if #children > 0 and (status == 'cancelled' or status == 'cancelling') then
  cancel_children(children, ref)
end
return status
