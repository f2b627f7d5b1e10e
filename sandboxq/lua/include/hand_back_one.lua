-- Handing back a leased job (hand_back.lua, reclaim.lua): the worker gives it
-- up before any outcome, so it goes back to waiting at its place with no
-- attempt and no stall counted; one whose cancel was asked meanwhile
-- (include/cancel.lua) is cancelled for good instead, as it must not run
-- again. The caller has taken it out of `active` (its lease was the
-- caller's token) and read whether a cancel is pending, so no read repeats.
-- `detail`: what became of its run, for a cancel's message; `from`: the
-- `waiting` event's source. Returns true if the job went back to waiting.
-- Needs: common, moves, retention, flow and cancel.
local function hand_back_one(prefix, job_key, id, now, maxlen, cancel_requested, cancelled_key,
    requests_key, events_key, detail, from)
  if cancel_requested then
    leave_active(prefix, job_key)
    cancel_for_good(prefix, job_key, id, now, maxlen, cancelled_key, requests_key, events_key,
      detail, '')
    return false
  end
  give_back(prefix, job_key, id, now, events_key, maxlen, from)
  return true
end
