-- Dependencies (Queue.add(..., depends_on=[...]), add_dependent.lua): a job
-- waits in `waiting-deps` until jobs that existed when it was added have
-- finished, in its queue or another of its hash tag (so in this slot).
--
-- The dependent (key prefix P, id D) keeps:
--   job hash field `on_dependency_failure`: "fail", "run" or "cancel"
--   awaits:D   hash, "queue:id" of each dependency not finished yet -> its
--              key prefix; empty (gone): nothing left to wait for
--   deps:D     hash, "queue:id" -> the result of each completed dependency
--   ignored:D  hash, "queue:id" -> the error of each failed one ("run")
-- The dependency (prefix Q, id I) keeps:
--   job hash field `awaited_as`: its own "queue:id", while jobs await it
--   dependents:I  set of "P|D", one per job that awaits it
-- A finishing or deleted dependency tells its dependents in the same
-- script (retention.lua's file_finished and delete_job call
-- settle_dependents), then drops `awaited_as` and its set: a retry of a
-- failed dependency tells no one again. A dependent whose state is no
-- longer `waiting-deps` (cancelled, removed, failed by another dependency),
-- or whose awaits hash does not name the dependency (a job of the same
-- custom id added since), is skipped: telling is idempotent, so nothing
-- needs unregistering. A set member that names no job of this hash tag is
-- skipped.
-- Needs: common, moves, retention.

-- Why a dependency that did not complete fails its dependents: `state`
-- and `error` as read from it, or removed.
local function dependency_failure(ref, state, error_text, removed)
  if removed then return 'dependency ' .. ref .. ' was removed', 'the job was removed' end
  local text = error_text or ''
  if state == 'cancelled' then return 'dependency ' .. ref .. ' ' .. text, text end
  return 'dependency ' .. ref .. ' failed: ' .. text, text
end

-- End a dependent that waits no more because a dependency failed: cancel
-- it (policy "cancel") or fail it (anything else), saying which dependency.
-- Its own dependents are told in turn (file_finished). (Not cancel.lua's
-- cancel_for_good: a dependent has no flow parent and no cancel request,
-- and including cancel.lua would add its closures to every fetch.)
local function end_dependent(dprefix, dkey, did, policy, message, now, maxlen)
  message = clip(message, EVENT_TEXT_BYTES)
  local events = dprefix .. 'events'
  redis.call('ZREM', dprefix .. 'waiting_deps', did)
  if policy == 'cancel' then
    redis.call('HSET', dkey, 'error', 'cancelled: ' .. message, 'traceback', '',
      'cancel_reason', message)
    finalize(dprefix, dkey, dprefix .. 'cancelled', did, 'cancelled', now, 'kf_count', 'kf_age',
      maxlen)
    emit(events, maxlen, 'cancelled', did, 'by', '', 'reason', message)
  else
    redis.call('HSET', dkey, 'error', message, 'traceback', '')
    finalize(dprefix, dkey, dprefix .. 'failed', did, 'failed', now, 'kf_count', 'kf_age', maxlen)
    emit(events, maxlen, 'failed', did, 'error', message)
  end
end

-- Tell one dependent (a dependents set's member) that the dependency `ref`
-- finished: `completed` with `value` (its result), or not, with `value`
-- (its error) and `message` (why the dependent fails).
local function tell_dependent(member, tag, ref, completed, value, message, now, maxlen)
  local dprefix, did = string.match(member, '^([^{]*{[^}]*}[^:]*:)|(.+)$')
  if not dprefix or string.sub(dprefix, 1, #tag) ~= tag then return end
  local dkey = dprefix .. 'job:' .. did
  local f = redis.pcall('HMGET', dkey, 'state', 'on_dependency_failure')
  if is_error(f) or f[1] ~= 'waiting-deps' then return end
  local awaits = dprefix .. 'awaits:' .. did
  local was = redis.pcall('HDEL', awaits, ref)
  if is_error(was) or was == 0 then return end
  if completed then
    redis.pcall('HSET', dprefix .. 'deps:' .. did, ref, value)  -- not a hash: not kept
  elseif f[2] == 'run' then
    redis.pcall('HSET', dprefix .. 'ignored:' .. did, ref, value)
  else
    end_dependent(dprefix, dkey, did, f[2], message, now, maxlen)
    return
  end
  if redis.call('HLEN', awaits) == 0 then
    redis.call('ZREM', dprefix .. 'waiting_deps', did)
    make_waiting(dprefix, dkey, did, now, false)
    emit(dprefix .. 'events', maxlen, 'waiting', did, 'from', 'dependencies')
  end
end

-- Dependencies to tell about, oldest first: a dependent that ends because
-- of one is itself a dependency that tells its own dependents, queued here
-- rather than nested, so a long chain cannot exhaust Lua's call depth.
local settle_queue, settle_next, settle_last, settling = {}, 1, 0, false

settle_dependents = function(prefix, id, job_key, now, maxlen, removed)
  local f = redis.pcall('HMGET', job_key, 'awaited_as', 'state', 'result', 'error')
  if is_error(f) or not f[1] then return end
  redis.call('HDEL', job_key, 'awaited_as')
  local set_key = prefix .. 'dependents:' .. id
  local members = redis.pcall('SMEMBERS', set_key)
  redis.call('DEL', set_key)
  if is_error(members) then return end  -- not a set: no one to tell
  local completed = not removed and f[2] == 'completed'
  local value, message = f[3] or 'null', nil
  if not completed then message, value = dependency_failure(f[1], f[2], f[4], removed) end
  settle_last = settle_last + 1
  settle_queue[settle_last] = {prefix, f[1], members, completed, value, message, now, maxlen}
  if settling then return end
  settling = true
  while settle_next <= settle_last do
    local s = settle_queue[settle_next]
    settle_queue[settle_next] = nil
    settle_next = settle_next + 1
    local tag = string.match(s[1], '^[^{]*{[^}]*}')
    for _, member in ipairs(s[3]) do
      if tag then tell_dependent(member, tag, s[2], s[4], s[5], s[6], s[7], s[8]) end
    end
  end
  settling = false
end
