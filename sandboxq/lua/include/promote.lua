-- Move delayed jobs whose time has come into the waiting set (one whose
-- key holds no hash goes to `failed` instead: see quarantine).
-- Returns how many were moved (at most `limit`).
-- Needs: common, moves.
local function promote_due(prefix, delayed_key, events_key, maxlen, now, limit)
  local due = redis.call('ZRANGEBYSCORE', delayed_key, '-inf', num(now), 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    local job_key = prefix .. 'job:' .. id
    if make_waiting(prefix, job_key, id, now, false) then
      emit(events_key, maxlen, 'waiting', id, 'from', 'delayed')
    else
      quarantine(prefix, id, now, events_key, maxlen)
    end
  end
  if #due > 0 then
    redis.call('ZREM', delayed_key, unpack(due))
  end
  return #due
end
