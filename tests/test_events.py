"""Lifecycle events: every transition, in per-job order, to every listener."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from sandboxq import Queue, QueueEvents
from sandboxq.drive import drive
from sandboxq.events import last_id_op
from sandboxq.testing import run_until_empty

JOBS = 1000


def collect(queue: Queue, since: str, until_completed: int, out: list[tuple[str, str]]) -> None:
    completed = 0
    for event, job_id, _payload in QueueEvents(queue).listen(since=since, stop_after=10):
        out.append((event, job_id))
        completed += event == "completed"
        if completed == until_completed:
            return


def test_two_listeners_each_get_every_transition_of_1000_jobs_in_order(queue: Queue) -> None:
    # Given two listeners following the queue from its current end
    cursor = drive(queue.client, last_id_op(queue.keys.events)).decode()
    seen: list[list[tuple[str, str]]] = [[], []]
    listeners = [
        threading.Thread(target=collect, args=(queue, cursor, JOBS, seen[i])) for i in range(2)
    ]
    for listener in listeners:
        listener.start()

    # When 1,000 jobs are added, and run (one in ten fails once, then succeeds)
    jobs = queue.add_bulk([{"name": "work", "data": i, "attempts": 2} for i in range(JOBS)])
    failed_once: set[int] = set()

    def work(job: Any) -> int:
        if job.data % 10 == 0 and job.data not in failed_once:
            failed_once.add(job.data)
            raise RuntimeError("first try fails")
        return int(job.data)

    run_until_empty(queue, {"work": work})
    for listener in listeners:
        listener.join(30)

    # Then both listeners saw the same events, every job's full life in order
    assert seen[0] == seen[1]
    by_job: dict[str, list[str]] = defaultdict(list)
    for event, job_id in seen[0]:
        by_job[job_id].append(event)
    assert len(by_job) == JOBS
    for job in jobs:
        expected = ["added", "active", "completed"]
        if int(job.data) % 10 == 0:
            expected = ["added", "active", "retrying", "active", "completed"]
        assert by_job[job.id] == expected, job.id


def test_a_listener_resumes_from_its_last_seen_id(queue: Queue) -> None:
    # Given a listener that read the events of a first job
    events = QueueEvents(queue)
    first = queue.add("a")
    run_until_empty(queue, {"a": lambda job: 1})
    got = [e for e in events.listen(since="0", stop_after=0.2)]
    assert [(e, j) for e, j, _ in got][-1] == ("completed", first.id)
    resume_from = events.last_id
    assert resume_from is not None

    # When more happens and it resumes from where it stopped
    second = queue.add("a")
    run_until_empty(queue, {"a": lambda job: 2})
    resumed = [(e, j) for e, j, _ in QueueEvents(queue).listen(since=resume_from, stop_after=0.2)]

    # Then it gets exactly the new events
    assert resumed == [("added", second.id), ("active", second.id), ("completed", second.id)]


def test_failed_events_carry_the_error(queue: Queue) -> None:
    job = queue.add("boom")

    def boom(_job: Any) -> None:
        raise ValueError("no good")

    run_until_empty(queue, {"boom": boom})
    payloads = [
        p
        for e, j, p in QueueEvents(queue).listen(since="0", stop_after=0.2)
        if e == "failed" and j == job.id
    ]
    assert payloads == [{"error": "ValueError: no good"}]


def test_listen_fixes_its_start_when_called_not_at_the_first_next(queue: Queue) -> None:
    # Given a follower made before the job is added, and read only after
    follower = QueueEvents(queue).listen(stop_after=0.3, block_seconds=0.1)
    job = queue.add("a", 1)
    run_until_empty(queue, {"a": lambda job: {"double": job.data * 2}})

    # Then it sees the job from its first event, with decoded payloads
    assert [(e, p) for e, j, p in follower if j == job.id] == [
        ("added", {"state": "waiting"}),
        ("active", {}),
        ("completed", {"result": {"double": 2}}),
    ]


def test_listen_can_follow_one_job(queue: Queue) -> None:
    noisy = [queue.add("a", n) for n in range(5)]
    followed = queue.add("a", 99)
    run_until_empty(queue, {"a": lambda job: job.data})

    events = QueueEvents(queue)
    seen = list(events.listen(since="0", job_id=followed.id, stop_after=0.3, block_seconds=0.1))

    assert [(e, j) for e, j, _ in seen] == [
        ("added", followed.id),
        ("active", followed.id),
        ("completed", followed.id),
    ]
    assert seen[-1][2] == {"result": 99}
    assert all(job.id != followed.id for job in noisy)


def test_progress_is_decoded_and_a_big_result_travels_as_its_size(queue: Queue) -> None:
    big = "x" * 5000
    job = queue.add("a")

    def report_then_return(job: Any) -> str:
        job.update_progress({"done": 3, "of": 4})
        return big

    run_until_empty(queue, {"a": report_then_return})
    payloads = {
        e: p
        for e, j, p in QueueEvents(queue).listen(since="0", stop_after=0.2)
        if j == job.id and e in ("progress", "completed")
    }
    assert payloads["progress"] == {"progress": {"done": 3, "of": 4}}
    # the event stays small; the job has the result
    assert payloads["completed"] == {"result_bytes": len(big) + 2}
    assert queue.get_job(job.id).result == big  # type: ignore[union-attr]
