-- Flows: a parent job waits in `waiting-children` until its children finish.
-- A child's hash links to its parent: parent_prefix, parent_id, ref (the
-- child's "queue:id"), fail_parent and ignore_failure ("1"/"0"). The parent's
-- keys are built from parent_prefix, which add_flow.lua checked shares this
-- queue's hash tag, so they are in the same slot.
-- Needs: common, retention.

-- The children's results a parent reads, as one JSON object {ref: result}.
local function children_json(prefix, id)
  local deps = redis.call('HGETALL', prefix .. 'deps:' .. id)
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
-- A parent failed this way tells its own parent in turn.
local function notify_parent(job_key, now, maxlen, completed, value)
  local link_fields = {'parent_prefix', 'parent_id', 'ref', 'fail_parent', 'ignore_failure'}
  local link = redis.call('HMGET', job_key, unpack(link_fields))
  while link[1] do
    local pprefix, pid, ref = link[1], link[2], link[3]
    local pkey = pprefix .. 'job:' .. pid
    if redis.call('HGET', pkey, 'state') ~= 'waiting-children' then return end
    if completed or link[5] == '1' then
      local where = completed and 'deps:' or 'ignored:'
      redis.call('HSET', pprefix .. where .. pid, ref, value)
      if redis.call('HINCRBY', pkey, 'pending', -1) <= 0 then
        redis.call('ZREM', pprefix .. 'waiting_children', pid)
        make_waiting(pprefix, pkey, pid, now, false)
        emit(pprefix .. 'events', maxlen, 'waiting', pid, 'from', 'children')
      end
      return
    end
    if link[4] ~= '1' then return end
    local message = 'child ' .. ref .. ' failed: ' .. value
    local next_link = redis.call('HMGET', pkey, unpack(link_fields))
    redis.call('ZREM', pprefix .. 'waiting_children', pid)
    redis.call('HSET', pkey, 'error', message, 'traceback', '')
    finalize(pprefix, pkey, pprefix .. 'failed', pid, 'failed', now, 'kf_count', 'kf_age')
    emit(pprefix .. 'events', maxlen, 'failed', pid, 'error', message)
    link, value = next_link, message
  end
end
