"""Prefetching: a worker whose jobs are short leases more jobs than it has
free children (one queued behind each busy child's job, and a local buffer).

What must hold, with real workers and real signals:

- a prefetched job is leased but not started: no ``started_at``, no
  ``active`` event until a child really takes it;
- a job prefetched behind a slow one goes back to the queue after a short
  wait, so another worker runs it meanwhile (no prefetch trap);
- draining and a forced stop hand prefetched jobs back at once, with no
  attempt spent;
- a child that crashes fails only the job it was running; the jobs
  prefetched behind it run;
- an idle worker's wait carries a fetch that Redis runs as the wait answers:
  the jobs it leases are started like prefetched ones, once.
"""

from __future__ import annotations

import select
import signal
import threading
import time
from collections.abc import Callable

import redis

from sandboxq import Job, Queue
from sandboxq.worker.broker import Broker, RoundResult
from sandboxq.worker.settings import WorkerSettings
from tests.worker_harness import WorkerProcess, wait_for_job, wait_for_jobs, wait_until

StartWorker = Callable[..., WorkerProcess]

EXIT_OK, EXIT_FORCED = 0, 1


def warm_up(queue: Queue) -> None:
    """Run short jobs first: a worker prefetches once it has seen that its
    jobs are short next to a round trip to Redis."""
    jobs = queue.add_bulk([{"name": "noop"}] * 20)
    wait_for_jobs(queue, [job.id for job in jobs])
    queue.clean("completed", keep=0)


def prefetched(queue: Queue, job_id: str) -> Job | None:
    """The job if it is leased by a worker but not started."""
    job = queue.get_job(job_id)
    leased = job is not None and job.state == "active" and job.fields.get("token")
    return job if leased and job.started_at is None else None


def active_events(queue: Queue, job_id: str) -> int:
    """How many ``active`` events the queue's stream holds for the job."""
    wanted = {b"event": b"active", b"job_id": job_id.encode()}
    events = queue.client.xrange(queue.keys.events)
    return sum(1 for _id, fields in events if wanted.items() <= fields.items())


#: The events of one ``progress`` job, in order: started once, before its progress.
def in_order(events: list[str]) -> bool:
    """The events of a job that reports progress 3 times, in order: added,
    active, then its progress (1 to 3 events: progress the parent has not
    sent yet is replaced by the newer value), then completed."""
    middle = events[2:-1]
    return (
        events[:2] == ["added", "active"]
        and events[-1:] == ["completed"]
        and 1 <= len(middle) <= 3
        and set(middle) == {"progress"}
    )


def job_events(queue: Queue, job_id: str) -> list[str]:
    """The names of the job's events in the queue's stream, in order."""
    wanted = job_id.encode()
    events = queue.client.xrange(queue.keys.events)
    return [fields[b"event"].decode() for _id, fields in events if fields[b"job_id"] == wanted]


def slow_then_short(queue: Queue, slow: str, data: object, short: int) -> tuple[str, list[str]]:
    """One slow job and ``short`` no-op jobs behind it, in one add, so an
    idle worker leases them together. Waits until the slow one runs and the
    first short one is prefetched (how many more are depends on how fast
    Redis answers next to how short the jobs were)."""
    jobs = queue.add_bulk([{"name": slow, "data": data}] + [{"name": "noop"}] * short)
    first, rest = jobs[0].id, [job.id for job in jobs[1:]]
    wait_for_job(queue, first, ("active",))
    wait_until(lambda: prefetched(queue, rest[0]), 5, f"{rest[0]} prefetched")
    return first, rest


def test_a_job_prefetched_behind_a_slow_one_goes_to_another_worker(
    queue: Queue, start_worker: StartWorker
) -> None:
    first = start_worker(procs=1)
    warm_up(queue)
    slow, [waiting] = slow_then_short(queue, "sleep", 8, 1)
    assert active_events(queue, waiting) == 0  # leased, not started
    start_worker(procs=1)
    done = wait_for_job(queue, waiting, timeout=6)
    assert done.state == "completed"
    assert queue.get_job(slow).state == "active", "the slow job was still running"
    assert done.attempts_made == 1 and done.started_at is not None
    assert active_events(queue, waiting) == 1
    assert first.running


def test_started_at_marks_when_a_child_took_the_job(
    queue: Queue, start_worker: StartWorker
) -> None:
    start_worker(procs=1)
    warm_up(queue)
    slow, rest = slow_then_short(queue, "sleep", 0.3, 3)
    jobs = wait_for_jobs(queue, [slow, *rest])
    assert all(job.state == "completed" for job in jobs.values())
    for job_id in rest:
        # Leased at once, but started after the 0.3 s job, in the one child.
        job = jobs[job_id]
        assert job.started_at is not None and job.created_at is not None
        assert job.started_at - job.created_at >= 0.25
        assert active_events(queue, job_id) == 1


def test_a_prefetched_job_reports_its_start_before_its_progress(
    queue: Queue, start_worker: StartWorker
) -> None:
    start_worker(procs=1)
    warm_up(queue)
    jobs = queue.add_bulk([{"name": "sleep", "data": 0.2}, {"name": "progress"}])
    wait_until(lambda: prefetched(queue, jobs[1].id), 5, "the progress job prefetched")
    done = wait_for_job(queue, jobs[1].id)
    assert done.state == "completed"
    assert in_order(job_events(queue, jobs[1].id)), job_events(queue, jobs[1].id)


def test_the_job_that_wakes_an_idle_worker_starts_once_when_a_child_takes_it(
    queue: Queue, start_worker: StartWorker
) -> None:
    # Given an idle worker, blocked in its wait (which carries a fetch)
    start_worker(procs=1)

    # When a job arrives
    job = queue.add("progress")

    # Then it runs once, and says so once, in order: its start is the
    # parent's report when the child took it, not the (earlier) fetch's time
    done = wait_for_job(queue, job.id)
    assert (done.state, done.attempts_made) == ("completed", 1)
    assert done.created_at is not None and done.started_at is not None
    assert done.finished_at is not None
    assert done.created_at <= done.started_at <= done.finished_at
    assert in_order(job_events(queue, job.id)), job_events(queue, job.id)


def test_drain_hands_prefetched_jobs_back_at_once(queue: Queue, start_worker: StartWorker) -> None:
    worker = start_worker(procs=1)
    warm_up(queue)
    slow, rest = slow_then_short(queue, "sleep", 3, 3)
    worker.send_signal(signal.SIGTERM)
    for job_id in rest:
        job = wait_for_job(queue, job_id, ("waiting",), timeout=2)
        assert job.attempts_made == 0 and job.started_at is None
    assert queue.get_job(slow).state == "active", "handed back while the drain ran"
    assert worker.wait(10) == EXIT_OK
    assert queue.get_job(slow).state == "completed"
    assert [queue.get_job(job_id).state for job_id in rest] == ["waiting"] * 3


def test_forced_stop_hands_prefetched_jobs_back(queue: Queue, start_worker: StartWorker) -> None:
    worker = start_worker(procs=1)
    warm_up(queue)
    slow, rest = slow_then_short(queue, "sleep", 30, 3)
    worker.send_signal(signal.SIGQUIT)
    assert worker.wait(10) == EXIT_FORCED
    for job_id in [slow, *rest]:
        job = queue.get_job(job_id)
        assert job is not None and job.state == "waiting" and job.attempts_made == 0


def test_a_crash_fails_only_the_running_job_not_those_prefetched(
    queue: Queue, start_worker: StartWorker
) -> None:
    start_worker(procs=1)
    warm_up(queue)
    jobs = queue.add_bulk([{"name": "sleep", "data": 0.3}, {"name": "segfault"}])
    jobs += queue.add_bulk([{"name": "noop"}] * 3)
    done = wait_for_jobs(queue, [job.id for job in jobs])
    crashed = done[jobs[1].id]
    assert crashed.state == "failed" and "SIGSEGV" in (crashed.error or "")
    assert crashed.attempts_made == 1
    for job in [jobs[0], *jobs[2:]]:
        assert done[job.id].state == "completed"
        assert done[job.id].attempts_made == 1


def test_children_recycled_with_jobs_queued_lose_none(
    queue: Queue, start_worker: StartWorker
) -> None:
    # Children that retire every 3 jobs get no job queued behind their last
    worker = start_worker("--max-jobs-per-child", "3", procs=2)
    warm_up(queue)
    jobs = queue.add_bulk([{"name": "noop"}] * 60)
    done = wait_for_jobs(queue, [job.id for job in jobs], timeout=30)
    assert all(job.state == "completed" and job.attempts_made == 1 for job in done.values())
    assert not worker.matching_lines(r"WARNING job|ERROR|child (exited|killed)")


def run_round(broker: Broker, free_slots: int = 0) -> RoundResult:
    """Send one step of ``broker`` and wait for its replies."""
    result = broker.start_round(free_slots)
    deadline = time.monotonic() + 10
    while result is None:
        assert time.monotonic() < deadline, "no reply from Redis"
        sockets = broker.link.sockets()
        readable, writable, _ = select.select(
            [fd for fd, _ in sockets], [fd for fd, wants in sockets if wants], [], 1.0
        )
        for fd, _ in sockets:
            result = result or broker.on_round_io(fd in readable, fd in writable, fd)
    return result


def test_the_broker_hands_back_jobs_that_never_ran_apart_from_those_that_may_have(
    queue: Queue, redis_url: str
) -> None:
    # Given a worker's broker holding two manual_retry_only jobs
    broker = Broker(WorkerSettings(url=redis_url), [queue.name], "w-token")
    try:
        never_ran = queue.add("charge", manual_retry_only=True)
        may_have_run = queue.add("charge", manual_retry_only=True)
        leased: list[str] = []
        while len(leased) < 2:
            leased += [job_id for _queue, job_id, _fields in run_round(broker, 2).fetched]

        # When it hands one back as never run, the other as interrupted
        broker.hand_back(queue.name, never_ran.id)
        broker.hand_back(queue.name, may_have_run.id, ran=True)
        released: list[str] = []
        while broker.has_pending():
            released += [i for _queue, ids in run_round(broker).handed_back for i in ids]

        # Then the one that never ran waits again, nothing spent, and the
        # other fails as manual_retry_only says
        assert released == [never_ran.id]
        assert not broker.holds_jobs()
        again, failed = queue.get_job(never_ran.id), queue.get_job(may_have_run.id)
        assert again is not None and (again.state, again.attempts_made) == ("waiting", 0)
        assert failed is not None and failed.state == "failed"
        assert "interrupted by a forced shutdown" in (failed.error or "")
    finally:
        broker.close()


# -- an idle worker's wait ------------------------------------------------------------
#: How long the idle worker's traffic is watched: well inside the 15 s
#: between its stalled-job recoveries, and long enough for several of the
#: 1 s re-arms an idle worker used to make.
IDLE_WINDOW_SECONDS = 3.0


def blocked_in_wait(queue: Queue) -> bool:
    """A client is blocked in BZPOPMIN on the queue's marker: the idle wait."""
    return any(
        c.get("cmd") == "bzpopmin" and "b" in c.get("flags", "") for c in queue.client.client_list()
    )


def commands_seen(queue: Queue, seconds: float) -> list[str]:
    """The commands clients sent Redis for ``seconds`` (MONITOR; not those
    scripts ran), up to a marker ECHO the test sends, which is left out."""
    marker = f"window-end-{time.monotonic_ns()}"
    pool = queue.client.connection_pool
    ender = redis.Redis(
        connection_pool=redis.ConnectionPool(
            connection_class=pool.connection_class, **pool.connection_kwargs
        )
    )
    ender.ping()  # connected before the window opens
    end_window = threading.Timer(seconds, ender.echo, (marker,))
    seen: list[str] = []
    with ender, queue.client.monitor() as monitor:
        end_window.start()
        try:
            while marker not in (command := monitor.next_command())["command"]:
                if command["client_type"] != "lua":
                    seen.append(command["command"])
        finally:
            end_window.join()
    return seen


def test_an_idle_worker_sends_nothing_but_its_wait(queue: Queue, start_worker: StartWorker) -> None:
    # Given an idle worker (a 60 s lease: recoveries 15 s apart)
    start_worker("--lease", "60", procs=1)
    wait_until(lambda: blocked_in_wait(queue), 10, "the worker blocked in its wait")

    # When nothing happens for a while
    seen = commands_seen(queue, IDLE_WINDOW_SECONDS)

    # Then its wait is all it has in Redis: no re-arming fetch, no look at
    # the schedules
    assert seen == []
    assert blocked_in_wait(queue)


def test_an_idle_worker_stops_at_once_ending_its_wait(
    queue: Queue, start_worker: StartWorker
) -> None:
    # Given an idle worker whose wait (carrying a fetch) lasts 30 s
    worker = start_worker("--lease", "60", procs=1)
    wait_until(lambda: blocked_in_wait(queue), 10, "the worker blocked in its wait")

    # When it is asked to stop
    worker.send_signal(signal.SIGTERM)

    # Then it unblocks the wait rather than wait it out, and exits cleanly
    # with nothing its wait's fetch leased left behind
    assert worker.wait(20) == EXIT_OK, worker.log
    assert not blocked_in_wait(queue)
    assert worker.matching_lines("stopped cleanly")
    assert not worker.matching_lines("lost fetch reply")
    job = queue.add("noop")
    assert queue.get_job(job.id).state == "waiting"  # no worker took it
