"""What the dashboard's POST requests do: one action on a job or a queue,
or one action on many jobs of a queue (bulk). Each is audited as done
``by`` the dashboard's user; each returns what to tell the user, the result
(for JSON callers) and the page to go back to."""

from __future__ import annotations

from typing import Any

from sandboxq.dashboard import templates
from sandboxq.dashboard.http import HTTPError, Request
from sandboxq.dashboard.store import Store
from sandboxq.errors import JobIsActive
from sandboxq.job import STATES

#: What a job's page can do to it (POST .../jobs/<id>/<verb>).
JOB_ACTIONS = ("retry", "promote", "remove", "cancel")
#: What a job list can do to the jobs selected on it (POST .../bulk).
BULK_ACTIONS = ("retry", "remove", "cancel")
#: The most jobs one bulk action takes.
MAX_BULK = 500
#: The largest ``older_than`` (seconds) or ``keep`` a clean takes: beyond any
#: real use, and exact in Lua's doubles even as milliseconds.
MAX_NUMBER = 10**12

#: An action's (message, result, page to go back to).
Outcome = tuple[str, Any, str]


def bulk(store: Store, q: str, request: Request, by: str) -> Outcome:
    """``action`` (retry, remove or cancel) on each of the jobs ``ids``
    (a repeated field, a JSON list, or ids separated by commas or
    spaces), each audited; those it does not apply to are skipped."""
    verb = request.form.get("action", "")
    if verb not in BULK_ACTIONS:
        raise HTTPError(400, f"unknown bulk action {verb[:40]!r}")
    ids = list(dict.fromkeys(i for v in request.values("ids") for i in v.replace(",", " ").split()))
    if not ids:
        raise HTTPError(400, "no jobs selected")
    if len(ids) > MAX_BULK:
        raise HTTPError(400, f"at most {MAX_BULK} jobs at once, got {len(ids)}")
    queue = store.queue(q)
    done: list[str] = []
    skipped: list[str] = []
    for job_id in ids:
        try:
            if verb == "retry":
                ok: Any = queue.retry(job_id, by=by)
            elif verb == "remove":
                ok = queue.remove(job_id, by=by)
            else:
                ok = queue.cancel(job_id, reason=request.form.get("reason") or None, by=by)
        except JobIsActive:
            ok = False
        (done if ok else skipped).append(job_id)
    message = f"{verb}: {len(done)} of {len(ids)} job(s)"
    if skipped:
        message += f" ({len(skipped)} not in a state that allows it)"
    state = request.form.get("state", "")
    back = templates.url(request.root, "queues", q, state=state if state in STATES else "")
    return message, {"done": done, "skipped": skipped}, back


def act(store: Store, path: list[str], request: Request, by: str) -> Outcome:
    """Run one action; (message, result, page to go back to)."""
    url, form, root = templates.url, request.form, request.root
    match path:
        case ["queues", q, "bulk"]:
            return bulk(store, q, request, by)
        case ["queues", q, "jobs", job_id, verb] if verb in JOB_ACTIONS:
            queue = store.queue(q)
            back = url(root, "queues", q, "jobs", job_id)
            done: Any
            if verb == "retry":
                done = queue.retry(job_id, by=by)
            elif verb == "promote":
                done = queue.promote(job_id, by=by)
            elif verb == "cancel":
                done = queue.cancel(job_id, reason=form.get("reason") or None, by=by)
                if done is not None:
                    return f"cancel: job {job_id} ({done})", done, back
            else:
                done = queue.remove(job_id, by=by)
                back = url(root, "queues", q)
            if not done:
                raise HTTPError(409, f"cannot {verb} job {job_id}: not in a state that allows it")
            return f"{verb}: job {job_id}", done, back
        case ["queues", q, verb] if verb in ("pause", "resume"):
            queue = store.queue(q)
            done = queue.pause(by=by) if verb == "pause" else queue.resume(by=by)
            return (
                f"{verb}d queue {q}" if done else f"queue {q} was already {verb}d",
                done,
                url(root, "queues", q),
            )
        case ["queues", q, "retry-failed"]:
            moved = store.queue(q).retry_failed(by=by)
            return (
                f"retried {moved} failed job(s)",
                moved,
                url(root, "queues", q, state="failed"),
            )
        case ["queues", q, "clean"]:
            state = form.get("state", "")
            if state not in STATES:
                raise HTTPError(400, f"unknown state {state!r}")
            older = form.get("older_than") or None
            keep = form.get("keep") or None
            removed = store.queue(q).clean(
                state,
                older_than=None if older is None else _seconds(older, "older_than"),
                keep=None if keep is None else _count(keep, "keep"),
                by=by,
            )
            return (
                f"removed {removed} {state} job(s)",
                removed,
                url(root, "queues", q, state=state),
            )
    raise HTTPError(404, "no such action")


# -- numbers in forms ----------------------------------------------------------------
def _seconds(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise HTTPError(400, f"{name} must be a number, got {text[:40]!r}") from None
    return _bounded(value, text, name)


def _count(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise HTTPError(400, f"{name} must be a whole number, got {text[:40]!r}") from None
    return int(_bounded(value, text, name))


def _bounded(value: float, text: str, name: str) -> float:
    if not 0 <= value <= MAX_NUMBER:  # NaN and infinities fail this too
        raise HTTPError(400, f"{name} must be from 0 to {MAX_NUMBER:.0e}, got {text[:40]!r}")
    return value
