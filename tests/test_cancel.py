"""Cancellation: ``Queue.cancel`` / ``Job.cancel``, the ``cancelled`` state,
cancel.lua and how every script that settles a leased job honours a pending
request, then real workers stopping a cancelled job's processes, the CLI
command and the dashboard button.

The Lua-level tests pass the time in explicitly (``NOW``); the worker tests
run real ``sandboxq worker`` subprocesses and wait on their log lines and on
Redis, never on fixed sleeps.
"""

from __future__ import annotations

import getpass
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandboxq import JobCancelled, Queue
from sandboxq.dashboard import app
from sandboxq.testing import run_until_empty
from tests.asgi_client import Client
from tests.test_dashboard import TOKEN, csrf_of
from tests.test_lua_scripts import (
    LEASE,
    NOW,
    add,
    event_names,
    events,
    fetch_ids,
    fields,
    finish,
    ids,
    leased_job,
    outcome,
)
from tests.test_lua_scripts import TOKEN as WORKER
from tests.test_worker_metrics import free_port, samples, value
from tests.test_worker_prefetch import active_events, slow_then_short, warm_up
from tests.test_worker_subprocesses import (
    DEADLINE,
    assert_all_gone,
    assert_worker_carries_on,
    pids_file,  # noqa: F401 - a fixture
    wait_for_pids,
)
from tests.worker_harness import (
    WorkerProcess,
    assert_counts,
    run_sandboxq,
    wait_for_job,
)

StartWorker = Callable[..., WorkerProcess]


def state_of(q: Queue, job_id: str) -> str:
    job = q.get_job(job_id)
    assert job is not None
    return job.state


def pending_requests(q: Queue) -> list[str]:
    return ids(q, q.keys.cancel_requests)


# -- jobs that are not running are cancelled at once ---------------------------------
@pytest.mark.parametrize(
    ("options", "state"),
    [
        pytest.param({}, "waiting", id="waiting"),
        pytest.param({"group": "customer-7"}, "waiting", id="waiting-in-a-group"),
        pytest.param({"delay": 3600}, "delayed", id="delayed"),
    ],
)
def test_a_job_that_is_not_running_is_cancelled_at_once(
    queue: Queue, options: dict[str, Any], state: str
) -> None:
    # Given a job waiting (or delayed) with another one behind it
    job = queue.add("work", {"n": 1}, **options)
    other = queue.add("work", {"n": 2}, **options)
    assert job.state == state

    # When it is cancelled, with a reason
    status = job.cancel(reason="wrong input", by="alice")

    # Then it is cancelled now, out of its set, saying who and why
    assert status == "cancelled"
    cancelled = queue.get_job(job.id)
    assert cancelled is not None
    assert (cancelled.state, cancelled.cancelled_by, cancelled.cancel_reason) == (
        "cancelled",
        "alice",
        "wrong input",
    )
    assert cancelled.error == "cancelled by alice: wrong input"
    assert cancelled.finished_at is not None
    assert queue.job_ids("cancelled") == [job.id]
    assert_counts(queue, cancelled=1, **{state: 1})
    # and the other job is untouched, the first in line now
    assert queue.job_ids(state) == [other.id]
    # and an event and the audit record it
    assert events(queue, job.id)[-1] == ("cancelled", {"by": "alice", "reason": "wrong input"})
    assert [(e["by"], e["action"]) for e in cancelled.audit()] == [("alice", "cancel: wrong input")]
    assert queue.audit_log()[0]["job_id"] == job.id
    # and a worker never runs it
    ran = run_until_empty(queue, {"work": lambda j: j.data})
    assert ran == ({"completed": 1} if state == "waiting" else {})
    assert state_of(queue, job.id) == "cancelled"


def test_a_flow_parent_kept_from_its_children_is_cancelled_alone(queue: Queue) -> None:
    # Given a parent waiting for a waiting child, a delayed one and one that runs
    flow = queue.add_flow(
        parent={"name": "parent"},
        children=[{"name": "child"}, {"name": "child"}, {"name": "child", "delay": 3600}],
    )
    running, waiting, delayed = (child.job.id for child in flow.children)
    assert fetch_ids(queue, NOW, 1) == [running]

    # When the parent is cancelled keeping its children (by default, by the OS user)
    assert queue.cancel(flow.job.id, keep_children=True) == "cancelled"

    # Then the parent is cancelled, and its children are untouched
    assert state_of(queue, flow.job.id) == "cancelled"
    assert queue.get_job(flow.job.id).cancelled_by == getpass.getuser()  # type: ignore[union-attr]
    assert [state_of(queue, i) for i in (running, waiting, delayed)] == [
        "active",
        "waiting",
        "delayed",
    ]
    assert pending_requests(queue) == []
    # and the waiting child runs on without waking its parent
    assert run_until_empty(queue, {"child": lambda j: 1}) == {"completed": 1}
    assert state_of(queue, flow.job.id) == "cancelled"
    assert_counts(queue, active=1, completed=1, delayed=1, cancelled=1)


@pytest.fixture
def flow_queues(queue: Queue) -> Iterator[tuple[Queue, Queue, Queue]]:
    """The test's queue and two more of its hash tag, for flows across queues."""
    others = (queue.sibling(f"{queue.name}:kids"), queue.sibling(f"{queue.name}:busy"))
    yield (queue, *others)
    for other in others:
        other.obliterate(force=True)


def with_parent(parent_ref: str, reason: str) -> str:
    return f"its flow parent {parent_ref} was cancelled: {reason}"


def test_cancelling_a_flow_parent_cancels_its_unfinished_children_down_the_flow(
    flow_queues: tuple[Queue, Queue, Queue],
) -> None:
    queue, kids, busy = flow_queues
    # Given a parent with, across three queues of its hash tag: a child that
    # completed, one that runs, one waiting, one prioritized, one in a
    # group, one delayed, and a child waiting for children of its own
    flow = queue.add_flow(
        parent={"name": "parent"},
        children=[
            {"queue": busy.name, "name": "child"},
            {"queue": busy.name, "name": "child"},
            {"name": "child"},
            {"queue": kids.name, "name": "child", "priority": 5},
            {"queue": kids.name, "name": "child", "group": "customer-7"},
            {"name": "child", "delay": 3600},
            {
                "queue": kids.name,
                "name": "mid",
                "children": [{"name": "leaf"}, {"queue": kids.name, "name": "leaf", "delay": 60}],
            },
        ],
    )
    done, running, waiting, urgent, grouped, later, mid = (c.job for c in flow.children)
    leaf, later_leaf = (c.job for c in flow.children[-1].children)
    assert fetch_ids(busy, NOW, 2) == [done.id, running.id]
    assert finish(busy, NOW, outcome(done.id, "completed", "ok")) == ["completed"]

    # When the parent is cancelled
    assert queue.cancel(flow.job.id, reason="customer left", by="alice") == "cancelled"

    # Then the parent is cancelled first, so no child counts against it
    root = queue.get_job(flow.job.id)
    assert root is not None
    assert (root.state, root.error) == ("cancelled", "cancelled by alice: customer left")
    # and every unfinished job under it is cancelled, saying with which parent
    root_ref, mid_ref = f"{queue.name}:{flow.job.id}", f"{kids.name}:{mid.id}"
    parents = {job.id: root_ref for job in (waiting, urgent, grouped, later, mid)}
    parents |= {leaf.id: mid_ref, later_leaf.id: mid_ref}
    for job in (waiting, urgent, grouped, later, mid, leaf, later_leaf):
        found = job.queue.get_job(job.id)
        assert found is not None
        why = with_parent(parents[job.id], "customer left")
        assert (found.state, found.cancelled_by, found.cancel_reason) == ("cancelled", "alice", why)
        assert found.error == f"cancelled by alice: {why}"
        assert [(e["by"], e["action"]) for e in found.audit()] == [("alice", f"cancel: {why}")]
        assert events(job.queue, job.id)[-1] == ("cancelled", {"by": "alice", "reason": why})
    # and the running child has a cancel request for its worker, as if
    # cancelled on its own; the completed child stays completed
    why = with_parent(root_ref, "customer left")
    asked = busy.get_job(running.id)
    assert asked is not None
    assert (asked.state, asked.cancelled_by, asked.cancel_reason) == ("active", "alice", why)
    assert pending_requests(busy) == [running.id]
    assert [e["action"] for e in asked.audit()] == [f"cancel requested: {why}"]
    assert events(busy, running.id)[-1] == ("cancel-requested", {"by": "alice", "reason": why})
    assert state_of(busy, done.id) == "completed"
    assert_counts(queue, cancelled=4)
    assert_counts(kids, cancelled=4)
    assert_counts(busy, active=1, completed=1)
    # and nothing is left to run
    for q in flow_queues:
        assert run_until_empty(q, {"child": lambda j: 1, "leaf": lambda j: 1}) == {}

    # When the running child's worker stops it
    stopped = outcome(running.id, "cancelled", "stopped while running")
    assert finish(busy, NOW + 1_000, stopped) == ["cancelled"]

    # Then it is cancelled, and its parent stays as it was
    assert busy.get_job(running.id).error == f"cancelled by alice: {why} (stopped while running)"  # type: ignore[union-attr]
    assert queue.get_job(flow.job.id).error == "cancelled by alice: customer left"  # type: ignore[union-attr]


def test_cancelling_a_child_flow_cancels_its_children_only(
    flow_queues: tuple[Queue, Queue, Queue],
) -> None:
    queue, kids, _busy = flow_queues
    # Given root <- mid <- leaf, and a sibling of mid, all waiting
    flow = queue.add_flow(
        parent={"name": "root"},
        children=[
            {"queue": kids.name, "name": "mid", "children": [{"name": "leaf"}]},
            {"name": "sibling"},
        ],
        ignore_failed_children=True,
    )
    mid, sibling = (c.job for c in flow.children)
    leaf = flow.children[0].children[0].job

    # When mid is cancelled, without a reason
    assert kids.cancel(mid.id, by="bob") == "cancelled"

    # Then its leaf is cancelled with it, named after mid's own ref
    cancelled_leaf = queue.get_job(leaf.id)
    assert cancelled_leaf is not None and cancelled_leaf.state == "cancelled"
    assert cancelled_leaf.cancel_reason == f"its flow parent {kids.name}:{mid.id} was cancelled"
    # and the root counts mid as a child that failed, while the sibling runs on
    assert state_of(queue, sibling.id) == "waiting"
    run_until_empty(queue, {"sibling": lambda j: "s", "root": lambda j: j.children_results()})
    root = queue.get_job(flow.job.id)
    assert root is not None and root.state == "completed"
    assert root.result == {f"{queue.name}:{sibling.id}": "s"}


@pytest.mark.parametrize(
    ("flow_options", "parent_state", "parent_error"),
    [
        pytest.param(
            {},
            "failed",
            "child {ref} failed: cancelled by bob: not needed",
            id="fail_parent_on_failure",
        ),
        pytest.param(
            {"ignore_failed_children": True}, "completed", None, id="ignore_failed_children"
        ),
        pytest.param({"fail_parent_on_failure": False}, "waiting-children", None, id="neither"),
    ],
)
def test_a_cancelled_flow_child_counts_as_a_child_that_failed_for_good(
    queue: Queue, flow_options: dict[str, Any], parent_state: str, parent_error: str | None
) -> None:
    # Given a parent with two children
    flow = queue.add_flow(
        parent={"name": "parent"}, children=[{"name": "child"}, {"name": "child"}], **flow_options
    )
    cancelled, done = (child.job for child in flow.children)

    # When one child is cancelled and the other completes
    assert cancelled.cancel(reason="not needed", by="bob") == "cancelled"
    run_until_empty(queue, {"child": lambda j: "ok", "parent": lambda j: j.children_results()})

    # Then the parent goes as it would for a child that failed for good
    parent = queue.get_job(flow.job.id)
    assert parent is not None
    assert parent.state == parent_state, parent.fields
    ref = f"{queue.name}:{cancelled.id}"
    if parent_error is not None:
        assert parent.error == parent_error.format(ref=ref)
    if parent_state == "completed":
        assert parent.children_failures() == {ref: "cancelled by bob: not needed"}
        assert parent.result == {f"{queue.name}:{done.id}": "ok"}


def test_a_flow_parent_that_retention_deletes_as_it_is_cancelled_still_cancels_its_children(
    queue: Queue,
) -> None:
    # Given a flow whose jobs keep no failed (nor cancelled) job
    flow = queue.add_flow(
        parent={"name": "parent", "keep_failed": {"count": 0}},
        children=[{"name": "mid", "keep_failed": {"count": 0}, "children": [{"name": "leaf"}]}],
    )
    mid, leaf = flow.children[0].job, flow.children[0].children[0].job

    # When the parent is cancelled
    assert queue.cancel(flow.job.id) == "cancelled"

    # Then the parent and its child are gone, with their lists of children,
    # and the grandchild was cancelled all the same
    assert queue.get_job(flow.job.id) is None and queue.get_job(mid.id) is None
    assert not queue.client.exists(queue.keys.children(flow.job.id), queue.keys.children(mid.id))
    assert state_of(queue, leaf.id) == "cancelled"


def test_a_listed_child_outside_the_hash_tag_is_never_touched(queue: Queue, redis_url: str) -> None:
    # Given a flow parent whose list of children names, besides its own
    # child, a job of a queue of another hash tag (written by something else)
    other = Queue(f"{queue.name}-other", url=redis_url)
    try:
        stranger = other.add("x")
        flow = queue.add_flow(parent={"name": "parent"}, children=[{"name": "child"}])
        queue.client.hset(
            queue.keys.children(flow.job.id), f"{other.name}:{stranger.id}", other.keys.prefix
        )

        # When the parent is cancelled
        assert queue.cancel(flow.job.id) == "cancelled"

        # Then its own child is cancelled, and the stranger left alone
        assert state_of(queue, flow.children[0].job.id) == "cancelled"
        assert state_of(other, stranger.id) == "waiting"
    finally:
        other.obliterate(force=True)


# -- nothing to cancel ---------------------------------------------------------------
def test_cancelling_a_finished_or_unknown_job_is_a_no_op(queue: Queue) -> None:
    # Given a completed, a failed and a cancelled job
    completed, failed = queue.add("ok"), queue.add("bad")
    run_until_empty(queue, {"ok": lambda j: 1, "bad": lambda j: 1 / 0})
    cancelled = queue.add("ok")
    cancelled.cancel()
    before = (queue.client.xlen(queue.keys.events), queue.client.xlen(queue.keys.audit))

    # When each, and an unknown id, is cancelled
    results = [queue.cancel(j.id) for j in (completed, failed, cancelled)]

    # Then nothing happens: no status, no event, no audit entry
    assert results == [None, None, None]
    assert queue.cancel("no-such-job") is None
    assert (queue.client.xlen(queue.keys.events), queue.client.xlen(queue.keys.audit)) == before
    assert [state_of(queue, j.id) for j in (completed, failed, cancelled)] == [
        "completed",
        "failed",
        "cancelled",
    ]


# -- active jobs: a request for the worker holding them ---------------------------------
def test_cancelling_an_active_job_leaves_a_request_for_its_worker(queue: Queue) -> None:
    # Given a job leased to a worker
    job_id = leased_job(queue)

    # When it is cancelled, twice
    first = queue.cancel(job_id, reason="stop it", by="carol")
    second = queue.cancel(job_id, reason="again", by="dave")

    # Then it stays active with one request, the first one, for its worker
    assert (first, second) == ("cancelling", "cancelling")
    job = queue.get_job(job_id)
    assert job is not None
    assert (job.state, job.cancelled_by, job.cancel_reason) == ("active", "carol", "stop it")
    assert pending_requests(queue) == [job_id]
    # and the request is audited and announced once
    assert [e["action"] for e in job.audit()] == ["cancel requested: stop it"]
    assert event_names(queue, job_id)[-1] == "cancel-requested"
    assert event_names(queue, job_id).count("cancel-requested") == 1


def run_with_request(queue: Queue, settle: list[Any], **job_fields: Any) -> tuple[str, list[str]]:
    """Lease a job, ask to cancel it, then settle it with ``settle`` (an
    outcome); returns the job id and the finish statuses."""
    job_id = leased_job(queue, **job_fields)
    assert queue.cancel(job_id, reason="stop", by="erin") == "cancelling"
    settle[0] = job_id
    return job_id, finish(queue, NOW + 1_000, settle)


#: How the worker settles a job whose cancel is pending: (outcome, the
#: job's attempts, the state it ends in, its error).
SETTLED_WITH_A_REQUEST = {
    "failed-with-attempts-left": (
        outcome("", "failed", "ValueError: x"),
        3,
        "cancelled",
        "cancelled by erin: stop (not retried: ValueError: x)",
    ),
    "retry": (
        outcome("", "retry", "later"),
        1,
        "cancelled",
        "cancelled by erin: stop (not run again: later)",
    ),
    "ratelimited": (
        outcome("", "ratelimited", "429", delay_ms=5_000),
        1,
        "cancelled",
        "cancelled by erin: stop (not run again: 429)",
    ),
    "stopped-by-its-worker": (
        outcome("", "cancelled", "stopped while running"),
        3,
        "cancelled",
        "cancelled by erin: stop (stopped while running)",
    ),
    "completed": (outcome("", "completed", "done"), 1, "completed", None),
    "failed-for-good": (outcome("", "failed", "ValueError: y"), 1, "failed", "ValueError: y"),
}


@pytest.mark.parametrize(
    ("settle", "attempts", "status", "error"),
    SETTLED_WITH_A_REQUEST.values(),
    ids=SETTLED_WITH_A_REQUEST.keys(),
)
def test_a_pending_request_stops_every_further_run_and_a_final_outcome_stands(
    queue: Queue, settle: list[Any], attempts: int, status: str, error: str | None
) -> None:
    # Given an active job whose cancel was asked
    # When its worker settles it
    job_id, statuses = run_with_request(queue, list(settle), attempts=attempts)

    # Then an outcome that would run it again cancels it; one that ends it
    # for good stands, and the request is dropped
    assert statuses == [status]
    job = fields(queue, job_id)
    assert job["state"] == status
    assert job.get("error") == error
    assert pending_requests(queue) == []
    assert "cancel_requested_at" not in job
    assert queue.client.zcard(queue.keys.wait) + queue.client.zcard(queue.keys.delayed) == 0
    if status == "cancelled":
        assert queue.job_ids("cancelled") == [job_id]
        assert (job["cancelled_by"], job["cancel_reason"]) == ("erin", "stop")
    else:
        assert "cancelled_by" not in job and "cancel_reason" not in job


def test_a_cancelled_finish_sent_again_is_recognized(queue: Queue) -> None:
    # Given an active job with a request, leased as lease 1
    job_id = leased_job(queue)
    queue.cancel(job_id)
    stopped = outcome(job_id, "cancelled", "stopped while running", lease=1)

    # When its worker's finish is sent twice (the first reply was lost)
    first = finish(queue, NOW + 10, stopped)
    again = finish(queue, NOW + 20, stopped)

    # Then the second says it was settled already, and changes nothing
    assert (first, again) == (["cancelled"], ["settled:cancelled"])
    assert event_names(queue, job_id).count("cancelled") == 1


def test_a_prefetched_job_dropped_for_its_cancel_spends_no_attempt(queue: Queue) -> None:
    # Given a job leased but not started (prefetched), whose cancel was asked
    [job_id] = add(queue)
    rows, *_ = queue.scripts.fetch(queue.keys, NOW, 1, WORKER, LEASE, start_now=0)
    assert len(rows) == 2
    queue.cancel(job_id)

    # When its worker settles it without running it
    assert finish(queue, NOW + 5, outcome(job_id, "cancelled", "never started")) == ["cancelled"]

    # Then no attempt was made and it never started
    job = fields(queue, job_id)
    assert (job.get("attempts_made", 0), job.get("started_at")) == (0, None)


# -- a request outlives its worker --------------------------------------------------------
def test_stalled_recovery_cancels_a_job_whose_request_is_pending(queue: Queue) -> None:
    # Given two jobs whose worker died, one of them with a cancel request
    cancelled = leased_job(queue, attempts=3)
    requeued = leased_job(queue, attempts=3)
    queue.cancel(cancelled, reason="abandon")

    # When their leases lapse and another worker recovers them
    result = queue.scripts.recover_stalled(queue.keys, NOW + LEASE + 1, max_stalls=5)

    # Then the one with a request is cancelled, not sent back to waiting
    assert result == ([requeued], [], [cancelled])
    job = fields(queue, cancelled)
    assert job["state"] == "cancelled"
    assert (
        job["error"]
        == f"cancelled by {getpass.getuser()}: abandon (its worker was lost while it ran)"
    )
    assert ids(queue, queue.keys.wait) == [requeued]
    assert pending_requests(queue) == []


def test_a_job_handed_back_with_a_pending_request_is_cancelled(queue: Queue) -> None:
    # Given two jobs of a worker with cancel requests: one it will release
    # (a forced stop), one whose fetch reply it lost (reclaim)
    released, reclaimed = leased_job(queue), leased_job(queue)
    queue.cancel(released)
    queue.cancel(reclaimed)

    # When the worker releases one and reclaims what it does not know of
    assert queue.scripts.hand_back(queue.keys, WORKER, [], [released], now=NOW + 5) == []
    assert queue.scripts.reclaim(queue.keys, NOW + 6, WORKER, 1, []) == []

    # Then both are cancelled, neither handed back to waiting
    assert fields(queue, released)["error"].endswith("(its worker let go of it)")
    assert fields(queue, reclaimed)["error"].endswith("(never started)")
    assert sorted(queue.job_ids("cancelled")) == sorted([released, reclaimed])
    assert_counts(queue, cancelled=2)


def test_a_hash_an_older_version_left_under_cancelled_moves_to_given_up(queue: Queue) -> None:
    # Given the fetch marks an older version kept under `cancelled`
    queue.client.hset(queue.keys.cancelled, mapping={"old-worker": "7 123"})

    # When a worker recovers stalled jobs (every worker does at its start)
    queue.scripts.recover_stalled(queue.keys, NOW, max_stalls=1)

    # Then the marks are under given_up, and the state's set can be used
    assert queue.client.hgetall(queue.keys.given_up) == {b"old-worker": b"7 123"}
    assert queue.add("x").cancel() == "cancelled"
    assert queue.counts()["cancelled"] == 1


# -- waiting on a job -----------------------------------------------------------------
def test_wait_raises_job_cancelled_naming_job_reason_and_who(queue: Queue) -> None:
    # Given a caller waiting for a job in another thread
    job = queue.add("resize", {"n": 1})
    raised: list[BaseException] = []

    def waiter() -> None:
        try:
            queue.get_job(job.id).wait(timeout=20)  # type: ignore[union-attr]
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()

    # When the job is cancelled
    job.cancel(reason="duplicate upload", by="frank")
    thread.join(10)

    # Then the wait ends with JobCancelled, saying which job, why and who
    assert not thread.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], JobCancelled), raised
    assert str(raised[0]) == f"job {job.id} (resize) was cancelled by frank: duplicate upload"
    assert raised[0].job.state == "cancelled"
    with pytest.raises(JobCancelled, match="no reason given"):
        other = queue.add("resize")
        other.cancel(by="frank")
        other.wait(timeout=5)


# -- counts, retention, clean, remove, obliterate -------------------------------------------
def test_cancelled_jobs_follow_keep_failed_retention(queue: Queue) -> None:
    # Given jobs that keep at most two failed (and so cancelled) jobs
    jobs = [queue.add("x", keep_failed={"count": 2}) for _ in range(3)]

    # When all three are cancelled
    for job in jobs:
        job.cancel()

    # Then only the two newest are kept
    assert queue.counts()["cancelled"] == 2
    assert queue.get_job(jobs[0].id) is None
    assert queue.job_ids("cancelled") == [jobs[2].id, jobs[1].id]


def test_clean_remove_and_obliterate_know_the_cancelled_state(queue: Queue) -> None:
    # Given three cancelled jobs and an active one with a pending request
    jobs = [queue.add("x") for _ in range(3)]
    for job in jobs:
        job.cancel()
    active = queue.add("x")
    queue.scripts.fetch(queue.keys, int(time.time() * 1000), 1, WORKER, LEASE)
    assert active.cancel() == "cancelling"

    # When one is removed and the others cleaned
    assert queue.remove(jobs[0].id) is True
    assert queue.clean("cancelled", older_than=0) == 2

    # Then none is left
    assert queue.counts()["cancelled"] == 0
    assert queue.audit_log()[0]["action"] == "clean cancelled (2 removed)"
    # and obliterating the queue deletes the requests too
    queue.obliterate(force=True)
    assert not queue.client.exists(queue.keys.cancel_requests, queue.keys.cancelled)


# -- the worker stops a cancelled job ---------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_running_job_and_everything_it_started_is_stopped_and_not_retried(
    start_worker: StartWorker,
    queue: Queue,
    pids_file: Path,  # noqa: F811
) -> None:
    # Given a worker running a job with attempts left that started a
    # program, a forked copy of its child and a program in a session of its own
    worker = start_worker("--kill-grace", "2", procs=2)
    job = queue.add("spawn_and_hang", {"pids": str(pids_file)}, attempts=3)
    child = worker.child_running("spawn_and_hang", job.id, timeout=DEADLINE)
    pids = wait_for_pids(pids_file, 3)

    # When it is cancelled
    assert job.cancel(reason="customer gave up", by="gina") == "cancelling"

    # Then it ends cancelled (it would hang for good otherwise), not retried
    done = wait_for_job(queue, job.id, ("cancelled", "completed", "failed"), timeout=DEADLINE)
    assert done.state == "cancelled", done.fields
    assert done.finished_at is not None
    assert done.error == "cancelled by gina: customer gave up (stopped while running)"
    assert done.attempts_made == 1
    # and its child and every process the job started are gone
    assert_all_gone([child, *pids])
    worker.wait_for_line(rf"job cancelled while running.*job_id={job.id}\b", DEADLINE)
    # and the worker carries on; the job was never run again
    assert_worker_carries_on(worker, queue)
    assert state_of(queue, job.id) == "cancelled"
    assert_counts(queue, completed=1, cancelled=1)
    assert queue.counts()["cancelled"] == 1


@pytest.mark.timeout(60)
def test_a_job_that_ignores_sigterm_is_killed_after_the_kill_grace(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a worker with a 0.5 s kill grace running a job that ignores SIGTERM
    port = free_port()
    worker = start_worker(
        "--kill-grace", "0.5", "--metrics-port", str(port), "--metrics-host", "127.0.0.1", procs=1
    )
    job = queue.add("ignore_term_and_hang", attempts=2)
    child = worker.child_running("ignore_term_and_hang", job.id, timeout=DEADLINE)

    # When it is cancelled
    job.cancel(by="hank")

    # Then SIGKILL ends it after the grace, and it is cancelled, saying so
    done = wait_for_job(queue, job.id, ("cancelled", "completed", "failed"), timeout=DEADLINE)
    assert done.state == "cancelled", done.fields
    assert done.error == (
        "cancelled by hank (killed while running: SIGTERM did not end it in 0.5s)"
    )
    assert_all_gone([child])
    worker.wait_pool_size(1, timeout=DEADLINE)
    # and the metrics count it as cancelled, not as a crash
    found = samples(port)
    name, q = "ignore_term_and_hang", queue.name
    assert value(found, "sandboxq_jobs_total", queue=q, name=name, outcome="cancelled") == 1
    assert value(found, "sandboxq_jobs_total", queue=q, name=name, outcome="failed") == 0
    assert value(found, "sandboxq_child_crashes_total", kind="signal") == 0
    assert value(found, "sandboxq_queue_jobs", queue=q, state="cancelled") == 1


@pytest.mark.timeout(60)
def test_a_prefetched_job_is_cancelled_without_ever_running(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a worker whose one child runs a slow job, with a short job
    # leased (prefetched) behind it
    start_worker(procs=1)
    warm_up(queue)
    slow, [waiting] = slow_then_short(queue, "sleep", 3, 1)

    # When the prefetched job is cancelled
    assert queue.cancel(waiting, by="ivy") == "cancelling"

    # Then it ends cancelled without having run: its worker settles it (or,
    # if it handed it back first, the hand-back does)
    done = wait_for_job(queue, waiting, ("cancelled", "completed", "failed"), timeout=DEADLINE)
    assert done.state == "cancelled", done.fields
    assert done.error in (
        "cancelled by ivy (never started)",
        "cancelled by ivy (its worker let go of it)",
    )
    assert (done.started_at, done.attempts_made, active_events(queue, waiting)) == (None, 0, 0)
    assert wait_for_job(queue, slow, timeout=DEADLINE).state == "completed"


@pytest.mark.timeout(60)
def test_a_job_whose_worker_died_with_a_cancel_pending_is_cancelled_on_recovery(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a job with attempts left whose worker was SIGKILLed while it ran
    first = start_worker("--lease", "1", procs=1)
    job = queue.add("hang", attempts=3)
    first.child_running("hang", job.id, timeout=DEADLINE)
    first.kill_group(signal.SIGKILL)
    first.wait(timeout=DEADLINE)

    # When it is cancelled (nobody holds it to stop it) and another worker starts
    assert job.cancel(reason="its worker is gone", by="jo") == "cancelling"
    second = start_worker("--lease", "1", procs=1)

    # Then the recovery cancels it instead of running it again
    done = wait_for_job(queue, job.id, ("cancelled", "completed", "failed"), timeout=DEADLINE)
    assert done.state == "cancelled", done.fields
    assert done.error == "cancelled by jo: its worker is gone (its worker was lost while it ran)"
    second.wait_for_line(rf"recovered stalled jobs .*cancelled={job.id}\b", timeout=DEADLINE)
    assert not any(title.endswith(f"#{job.id}") for title in second.child_titles().values())
    assert_counts(queue, cancelled=1)


@pytest.mark.timeout(60)
def test_a_flow_parent_cancelled_stops_its_running_child_and_cancels_the_rest(
    start_worker: StartWorker, flow_queues: tuple[Queue, Queue, Queue]
) -> None:
    queue, kids, _busy = flow_queues
    # Given a worker running one child of a flow whose parent, a waiting
    # child and a delayed child are in a queue it does not serve
    worker = start_worker("--kill-grace", "2", procs=2)
    flow = kids.add_flow(
        parent={"name": "parent"},
        children=[
            {"queue": queue.name, "name": "hang", "attempts": 3},
            {"name": "child"},
            {"name": "child", "delay": 3600},
        ],
    )
    running, waiting, delayed = (child.job for child in flow.children)
    child = worker.child_running("hang", running.id, timeout=DEADLINE)

    # When the parent is cancelled
    assert flow.job.cancel(reason="album deleted", by="lee") == "cancelled"

    # Then the waiting and delayed children are cancelled at once
    why = with_parent(f"{kids.name}:{flow.job.id}", "album deleted")
    for job in (waiting, delayed):
        assert kids.get_job(job.id).error == f"cancelled by lee: {why}"  # type: ignore[union-attr]
    # and the worker stops the running one, as if it had been cancelled on its own
    done = wait_for_job(queue, running.id, ("cancelled", "completed", "failed"), timeout=DEADLINE)
    assert done.state == "cancelled", done.fields
    assert done.error == f"cancelled by lee: {why} (stopped while running)"
    assert done.attempts_made == 1
    assert_all_gone([child])
    worker.wait_for_line(rf"job cancelled while running.*job_id={running.id}\b", DEADLINE)
    assert_worker_carries_on(worker, queue)
    assert_counts(kids, cancelled=3)


# -- the CLI and the dashboard ------------------------------------------------------------
def test_the_cancel_command(queue: Queue, redis_url: str) -> None:
    # Given an active job and a waiting one
    active = queue.add("x")
    queue.scripts.fetch(queue.keys, int(time.time() * 1000), 1, WORKER, LEASE)
    waiting = queue.add("x")
    url = ("--url", redis_url)

    # When each is cancelled from the command line
    first = run_sandboxq("cancel", queue.name, waiting.id, "--reason", "typo", "--by", "jane", *url)
    second = run_sandboxq("cancel", queue.name, active.id, "--json", *url)

    # Then the waiting one is cancelled and the active one is being cancelled
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"cancelled job {waiting.id} of queue {queue.name!r}\n"
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == {
        "queue": queue.name,
        "id": active.id,
        "status": "cancelling",
    }
    # and there is nothing left to cancel: exit 1 naming the state, or the missing job
    again = run_sandboxq("cancel", queue.name, waiting.id, *url)
    assert (again.returncode, again.stderr) == (
        1,
        f"sandboxq: job {waiting.id} is cancelled: nothing to cancel\n",
    )
    missing = run_sandboxq("cancel", queue.name, "nope", *url)
    assert missing.returncode == 1
    assert f"no job nope in queue {queue.name!r}" in missing.stderr
    # and the other commands show the state, who and why
    listed = run_sandboxq("jobs", queue.name, "--state", "cancelled", "--json", *url)
    [row] = json.loads(listed.stdout)
    assert (row["id"], row["state"], row["cancelled_by"], row["cancel_reason"]) == (
        waiting.id,
        "cancelled",
        "jane",
        "typo",
    )
    shown = run_sandboxq("job", queue.name, waiting.id, *url)
    assert "cancelled by   jane" in shown.stdout and "cancel: typo" in shown.stdout


def test_the_cancel_command_cancels_a_flow_parent_with_or_without_its_children(
    queue: Queue, redis_url: str
) -> None:
    # Given two flows, each a parent with a waiting child
    kept, cascaded = (
        queue.add_flow(parent={"name": "parent"}, children=[{"name": "child"}]) for _ in range(2)
    )
    url = ("--url", redis_url)

    # When one parent is cancelled with --keep-children, the other without
    first = run_sandboxq("cancel", queue.name, kept.job.id, "--keep-children", *url)
    second = run_sandboxq("cancel", queue.name, cascaded.job.id, "--by", "max", *url)

    # Then both parents are cancelled; the first's child waits on, the
    # second's is cancelled with its parent
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert first.stdout == f"cancelled job {kept.job.id} of queue {queue.name!r}\n"
    assert [state_of(queue, f.job.id) for f in (kept, cascaded)] == ["cancelled", "cancelled"]
    assert state_of(queue, kept.children[0].job.id) == "waiting"
    child = queue.get_job(cascaded.children[0].job.id)
    assert child is not None and child.state == "cancelled"
    assert (
        child.error
        == f"cancelled by max: its flow parent {queue.name}:{cascaded.job.id} was cancelled"
    )


def test_the_dashboard_cancel_button_cancels_a_flow_parent_with_its_children(
    redis_url: str, queue: Queue
) -> None:
    application = app(redis_url, token=TOKEN, queues=[queue.name])
    try:
        # Given a flow parent with a waiting child, and a user logged in
        flow = queue.add_flow(parent={"name": "parent"}, children=[{"name": "child"}])
        browser = Client(application)
        browser.post("/login", {"username": "kim", "password": TOKEN})
        path = f"/queues/{queue.name}/jobs/{flow.job.id}"

        # When the parent's Cancel button is pressed
        reply = browser.post(f"{path}/cancel", {"csrf_token": csrf_of(browser)})

        # Then the parent and its child are cancelled
        assert reply.status == 303, reply.text
        assert [state_of(queue, j.id) for j in (flow.job, flow.children[0].job)] == [
            "cancelled",
            "cancelled",
        ]
    finally:
        application.client.close()


def test_the_dashboard_cancel_button(redis_url: str, queue: Queue) -> None:
    application = app(redis_url, token=TOKEN, queues=[queue.name])
    try:
        # Given a waiting job, and a user logged in to the dashboard
        job = queue.add("x")
        browser = Client(application)
        browser.post("/login", {"username": "kim", "password": TOKEN})
        path = f"/queues/{queue.name}/jobs/{job.id}"

        # Then its page has a Cancel button with a reason box
        page = browser.get(path)
        assert f'action="{path}/cancel"' in page.text and 'name="reason"' in page.text
        # which needs the CSRF token
        assert browser.post(f"{path}/cancel", {"reason": "x"}).status == 403
        assert state_of(queue, job.id) == "waiting"

        # When it is pressed with a reason
        token = csrf_of(browser)
        reply = browser.post(f"{path}/cancel", {"csrf_token": token, "reason": "not needed"})

        # Then the job is cancelled, audited as the dashboard user (a name given
        # with the shared token, so unverified)
        assert reply.status == 303, reply.text
        cancelled = queue.get_job(job.id)
        assert cancelled is not None and cancelled.state == "cancelled"
        assert cancelled.cancelled_by == "dashboard:kim (unverified)"
        assert cancelled.audit()[-1]["action"] == "cancel: not needed"
        assert "dashboard:kim (unverified) (not needed)" in browser.get(path).text
        # and pressing it again has nothing to cancel
        again = browser.post(f"{path}/cancel", {}, x_csrf_token=token)
        assert again.status == 409 and "cannot cancel" in again.json()["error"]
        # and the job lists know the state
        listed = browser.get(f"/api/queues/{queue.name}/jobs?state=cancelled").json()
        assert [j["id"] for j in listed["jobs"]] == [job.id]
        assert listed["counts"]["cancelled"] == 1
    finally:
        application.client.close()
