-- add_flow: add a tree of jobs atomically. Parents wait in
-- `waiting-children` until every child has finished (see include/flow.lua).
-- A parent's `children:<id>` hash lists its children, "queue:id" -> the
-- child's key prefix, so cancelling the parent can cancel them (cancel.lua).
--
-- KEYS[1] events: the root queue's stream (names the slot; every queue of
--         the flow shares its hash tag, checked by the caller)
--
-- ARGV[1] prefix (unused: each node names its own)   ARGV[2] now   ARGV[3] maxlen
--         (the head: include/common.lua)
-- ARGV[4..] nodes: per node, parents before their children: key prefix,
--           queue name, parent node index (1-based; 0 = the root),
--           fail_parent ("1"/"0"), ignore_failure ("1"/"0"), number of
--           children, priority, delay_ms, n, then n field/value pairs for
--           the job hash
--
-- Returns the new job ids, one per node, in the same order.
--!include common
--!include moves
local now, maxlen = tonumber(ARGV[2]), ARGV[3]
local ids, prefixes = {}, {}

-- Every queue's job id counter must count before anything is written: a
-- flow added in part would leave parents waiting for children that never
-- came. (Restarting a counter could hand out the ids of existing jobs.)
local checked = {}
local i = 4
while i <= #ARGV do
  local counter = ARGV[i] .. 'id'
  if not checked[counter] then
    checked[counter] = true
    local value = redis.call('GET', counter)
    if value and not string.match(value, '^%-?%d+$') then
      error('the job id counter ' .. counter .. ' holds no integer; set it to the highest '
        .. 'job id to add jobs again')
    end
  end
  i = i + 9 + 2 * tonumber(ARGV[i + 8])
end

i = 4
while i <= #ARGV do
  local prefix, queue, parent = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local fail_parent, ignore_failure = ARGV[i + 3], ARGV[i + 4]
  local children = tonumber(ARGV[i + 5])
  local priority, delay, n = ARGV[i + 6], tonumber(ARGV[i + 7]), tonumber(ARGV[i + 8])
  local first, last = i + 9, i + 8 + 2 * n
  i = last + 1
  local id = tostring(redis.call('INCR', prefix .. 'id'))
  local job_key = prefix .. 'job:' .. id
  redis.call('HSET', job_key, 'priority', priority, 'created_at', num(now),
    unpack(ARGV, first, last))
  if parent > 0 then
    redis.call('HSET', job_key, 'parent_prefix', prefixes[parent], 'parent_id', ids[parent],
      'ref', queue .. ':' .. id, 'fail_parent', fail_parent, 'ignore_failure', ignore_failure)
    redis.call('HSET', prefixes[parent] .. 'children:' .. ids[parent], queue .. ':' .. id, prefix)
  end
  local events = prefix .. 'events'
  if children > 0 then
    redis.call('HSET', job_key, 'state', 'waiting-children', 'pending', children)
    redis.call('ZADD', prefix .. 'waiting_children', num(now), id)
    emit(events, maxlen, 'added', id, 'state', 'waiting-children')
  elseif delay > 0 then
    redis.call('ZADD', prefix .. 'delayed', num(now + delay), id)
    redis.call('HSET', job_key, 'state', 'delayed')
    redis.call('ZADD', prefix .. 'marker', 0, '0')
    emit(events, maxlen, 'added', id, 'state', 'delayed', 'delay_ms', num(delay))
    emit(events, maxlen, 'delayed', id, 'delay_ms', num(delay))
  else
    make_waiting(prefix, job_key, id, now, false)
    emit(events, maxlen, 'added', id, 'state', 'waiting')
  end
  ids[#ids + 1] = id
  prefixes[#prefixes + 1] = prefix
end
return ids
