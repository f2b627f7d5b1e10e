-- Flows: a parent job waits in `waiting-children` until its children finish.
-- A child's hash links to its parent: parent_prefix, parent_id, ref (the
-- child's "queue:id"), fail_parent and ignore_failure ("1"/"0"). The parent's
-- keys are built from parent_prefix, which add_flow.lua checked shares this
-- queue's hash tag, so they are in the same slot.
-- Needs: common, moves, retention (whose on_job_deleted this sets).

-- The children's results a parent reads, as one JSON object {ref: result}.
local function children_json(prefix, id)
  local deps = redis.pcall('HGETALL', prefix .. 'deps:' .. id)
  -- Not a hash: no JSON, so the worker fails the job saying its stored
  -- data is not valid, rather than running it without its children's results.
  if is_error(deps) then return 'corrupt: the results of its children are not a hash' end
  local parts = {}
  for i = 1, #deps, 2 do
    parts[#parts + 1] = cjson.encode(deps[i]) .. ':' .. deps[i + 1]
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

-- Tell a finished job's parent (if any): record the result; when it was the
-- last child, the parent moves to `waiting`. A child that failed for good
-- fails the parent (fail_parent), is recorded and skipped (ignore_failure),
-- or leaves the parent waiting for a manual retry of that child (neither).
-- A child that was removed (`removed`) can never be retried: it fails the
-- parent unless ignore_failure. A parent failed this way tells its own
-- parent in turn.
local function notify_parent(job_key, now, maxlen, completed, value, removed)
  local link_fields = {'parent_prefix', 'parent_id', 'ref', 'fail_parent', 'ignore_failure'}
  local link = redis.call('HMGET', job_key, unpack(link_fields))
  -- A link that is not whole, or names a key the parent's state cannot be
  -- read from (not a hash, or not in this slot), leaves no parent to tell.
  while link[1] and link[2] and link[3] do
    local pprefix, pid, ref = link[1], link[2], link[3]
    local pkey = pprefix .. 'job:' .. pid
    local state = redis.pcall('HGET', pkey, 'state')
    if state ~= 'waiting-children' then return end
    if completed or link[5] == '1' then
      local where = completed and 'deps:' or 'ignored:'
      redis.pcall('HSET', pprefix .. where .. pid, ref, value)  -- not a hash: not kept
      if hincr(pkey, 'pending', -1) <= 0 then
        redis.call('ZREM', pprefix .. 'waiting_children', pid)
        make_waiting(pprefix, pkey, pid, now, false)
        emit(pprefix .. 'events', maxlen, 'waiting', pid, 'from', 'children')
      end
      return
    end
    if link[4] ~= '1' and not removed then return end
    local message = 'child ' .. ref .. ' failed: ' .. value
    if removed then message = 'child ' .. ref .. ' was removed' end
    local next_link = redis.call('HMGET', pkey, unpack(link_fields))
    redis.call('ZREM', pprefix .. 'waiting_children', pid)
    redis.call('HSET', pkey, 'error', message, 'traceback', '')
    finalize(pprefix, pkey, pprefix .. 'failed', pid, 'failed', now, 'kf_count', 'kf_age', maxlen)
    emit(pprefix .. 'events', maxlen, 'failed', pid, 'error', clip(message, EVENT_TEXT_BYTES))
    link, value, removed = next_link, message, false
  end
end

-- A job is being deleted (removed, cleaned, drained, trimmed by retention or
-- obliterated). If a flow parent still waits for it, it counts as a failed
-- child; one the parent has already counted (completed, or failed and
-- skipped) changes nothing.
on_job_deleted = function(prefix, id, now, maxlen)
  local job_key = prefix .. 'job:' .. id
  local link = redis.pcall('HMGET', job_key, 'parent_prefix', 'parent_id', 'ref')
  if is_error(link) or not (link[1] and link[2] and link[3]) then return end
  local pprefix, pid, ref = link[1], link[2], link[3]
  if redis.pcall('HEXISTS', pprefix .. 'deps:' .. pid, ref) == 1
      or redis.pcall('HEXISTS', pprefix .. 'ignored:' .. pid, ref) == 1 then
    return
  end
  notify_parent(job_key, now, maxlen, false, 'the job was removed', true)
end
