"""--async-concurrency: a worker child runs several async jobs at once on its
event loop, each keeping its own timeout, cancel, progress, logs and durable
steps; a sync job still has a child to itself; what kills a child fails
exactly the jobs it ran, each with the same reason. Real workers, real
Redis; jobs that must be running when something happens wait for a file
the test creates, and overlap is judged from the times jobs recorded."""

from __future__ import annotations

import re
import socket
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sandboxq import Job, Queue
from sandboxq.worker.parent import MAX_ASYNC_CONCURRENCY, Worker
from tests.worker_harness import (
    WorkerProcess,
    run_sandboxq,
    wait_for_job,
    wait_for_jobs,
    wait_until,
)

StartWorker = Callable[..., WorkerProcess]
MODULES = ("tests.concurrent_jobs",)


def most_at_once(runs: Iterable[dict[str, Any]]) -> int:
    """The most runs that overlapped at any moment, from their recorded
    start and end times (a run that ends as another starts does not
    overlap it)."""
    edges = sorted(
        [(run["started"], 1) for run in runs] + [(run["ended"], -1) for run in runs],
    )
    running = most = 0
    for _moment, change in edges:
        running += change
        most = max(most, running)
    return most


def running_jobs(queue: Queue, job_ids: list[str]) -> dict[str, Job]:
    """Wait until every job said which child runs it (its progress)."""

    def all_running() -> dict[str, Job] | None:
        jobs = {job_id: queue.get_job(job_id) for job_id in job_ids}
        if all(job is not None and job.progress for job in jobs.values()):
            return jobs  # type: ignore[return-value]
        return None

    return wait_until(all_running, 15, f"{len(job_ids)} jobs to be running")


def held_jobs(queue: Queue, release: Path, count: int, name: str = "hold") -> list[str]:
    return [queue.add(name, {"release": str(release)}).id for _ in range(count)]


# -- many at once ---------------------------------------------------------------------
def test_forty_async_jobs_overlap_on_two_children_of_twenty(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given 40 waiting jobs that each await asyncio.sleep(1)
    job_ids = [queue.add("nap", 1).id for _ in range(40)]

    # When a worker of 2 children runs up to 20 async jobs in each
    worker = start_worker("--async-concurrency", "20", procs=2, modules=MODULES)
    runs = [job.result for job in wait_for_jobs(queue, job_ids, ("completed",), 30).values()]

    # Then no child ran more than 20 at once
    by_child: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_child[run["pid"]].append(run)
    assert all(most_at_once(child_runs) <= 20 for child_runs in by_child.values())
    # And all 40 started before the first one ended
    assert max(run["started"] for run in runs) < min(run["ended"] for run in runs)
    assert worker.stop() == 0


def test_jobs_are_spread_over_the_children(
    start_worker: StartWorker, queue: Queue, tmp_path: Path
) -> None:
    # Given two idle children that run up to 10 async jobs each
    worker = start_worker("--async-concurrency", "10", procs=2, modules=MODULES)
    idle = [f"sandboxq child {index}: idle" for index in (1, 2)]
    wait_until(lambda: sorted(worker.child_titles().values()) == idle, 10, "two idle children")

    # When 4 jobs come, one after the other
    release = tmp_path / "release"
    job_ids = held_jobs(queue, release, 4)
    where = [job.progress["pid"] for job in running_jobs(queue, job_ids).values()]

    # Then each child runs 2 of them
    assert sorted(where.count(pid) for pid in set(where)) == [2, 2]
    release.touch()
    wait_for_jobs(queue, job_ids, ("completed",), 10)
    assert worker.stop() == 0


def test_a_sync_job_still_has_its_child_to_itself(start_worker: StartWorker, queue: Queue) -> None:
    # Given async jobs, a sync one, and more async jobs, in that order
    before = [queue.add("nap", 0.3).id for _ in range(3)]
    alone = queue.add("alone", 0.3).id
    after = [queue.add("nap", 0.3).id for _ in range(3)]

    # When one child that runs up to 5 async jobs at once runs them
    worker = start_worker("--async-concurrency", "5", procs=1, modules=MODULES)
    jobs = wait_for_jobs(queue, [*before, alone, *after], ("completed",), 20)

    # Then the sync job ran while no async job ran
    sync_run = jobs[alone].result
    for job_id in (*before, *after):
        run = jobs[job_id].result
        assert run["ended"] <= sync_run["started"] or run["started"] >= sync_run["ended"]
    # And the async jobs before it ran together, as did those after it
    assert most_at_once(jobs[job_id].result for job_id in before) == 3
    assert most_at_once(jobs[job_id].result for job_id in after) == 3
    assert worker.stop() == 0


def test_a_stream_of_short_sync_and_async_jobs_keeps_sync_ones_alone(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given 600 short jobs, every third of a sync handler, so the worker
    # prefetches and queues them behind the children's running jobs
    names = ["alone" if index % 3 == 0 else "nap" for index in range(600)]
    queue.pause()
    job_ids = [job.id for job in queue.add_bulk([{"name": name, "data": 0} for name in names])]
    worker = start_worker("--async-concurrency", "10", procs=2, modules=MODULES)

    # When the worker drains them
    queue.resume()
    jobs = wait_for_jobs(queue, job_ids, ("completed",), 60)

    # Then every one completed, and no async job ran in a child while a sync one ran there
    by_child: dict[int, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for job in jobs.values():
        by_child[job.result["pid"]].append((job.name, job.result))
    for runs in by_child.values():
        for name, run in runs:
            for other_name, other in runs:
                if run is not other and "alone" in (name, other_name):
                    assert run["ended"] <= other["started"] or run["started"] >= other["ended"]
    assert worker.stop() == 0


# -- one job stopped, the others go on -------------------------------------------------
def test_a_timeout_stops_that_job_and_leaves_the_others_running(
    start_worker: StartWorker, queue: Queue, tmp_path: Path
) -> None:
    # Given one child running 4 async jobs, one of which has a timeout it will reach
    release = tmp_path / "release"
    others = held_jobs(queue, release, 3)
    slow = queue.add("hold", {"release": str(release)}, timeout=0.5).id
    worker = start_worker("--async-concurrency", "4", procs=1, modules=MODULES)
    child_pid = running_jobs(queue, [*others, slow])[slow].progress["pid"]

    # When its timeout passes
    timed_out = wait_for_job(queue, slow, ("failed",), 10)

    # Then it fails with its timeout, and the others still run in that child
    assert timed_out.error == "timed out after 0.5s"
    assert {queue.get_job(job_id).state for job_id in others} == {"active"}  # type: ignore[union-attr]
    release.touch()
    for job in wait_for_jobs(queue, others, ("completed",), 10).values():
        assert job.result["pid"] == child_pid
    assert worker.children() == [child_pid]
    assert worker.stop() == 0


def test_cancelling_one_job_leaves_the_others_running(
    start_worker: StartWorker, queue: Queue, tmp_path: Path
) -> None:
    # Given one child running 5 async jobs
    release = tmp_path / "release"
    job_ids = held_jobs(queue, release, 5)
    worker = start_worker("--async-concurrency", "5", procs=1, modules=MODULES)
    child_pid = running_jobs(queue, job_ids)[job_ids[0]].progress["pid"]

    # When a person cancels one of them
    cancelled, *others = job_ids
    assert queue.cancel(cancelled) == "cancelling"
    stopped = wait_for_job(queue, cancelled, ("cancelled",), 10)

    # Then that one ends cancelled, and the others finish in the same child
    assert stopped.state == "cancelled"
    release.touch()
    for job in wait_for_jobs(queue, others, ("completed",), 10).values():
        assert job.result["pid"] == child_pid
    assert worker.children() == [child_pid]
    assert worker.stop() == 0


def test_a_handler_that_raises_cancelled_error_itself_fails_like_any_other(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given an async job that raises CancelledError of its own, in a shared child
    job_id = queue.add("cancels_itself").id

    # When it runs
    start_worker("--async-concurrency", "4", procs=1, modules=MODULES)
    failed = wait_for_job(queue, job_id, ("failed",))

    # Then its attempt fails with that error, as it would in a child of its own
    assert failed.error == "CancelledError: gave up"


def test_a_task_that_will_not_stop_costs_its_child_and_every_job_in_it(
    start_worker: StartWorker, queue: Queue, tmp_path: Path
) -> None:
    # Given one child running 3 async jobs, one of which swallows its
    # cancellation and has a timeout it will reach
    release = tmp_path / "release"
    others = held_jobs(queue, release, 2)
    stubborn = queue.add("stubborn", 60, timeout=0.5).id
    worker = start_worker(
        "--async-concurrency", "3", "--kill-grace", "0.5", procs=1, modules=MODULES
    )
    running_jobs(queue, [*others, stubborn])

    # When its timeout passes, and its task ignores the cancellation for the kill grace
    jobs = wait_for_jobs(queue, [stubborn, *others], ("failed",), 15)

    # Then its child is killed, and every job it ran fails with one reason saying why
    reasons = {job.error for job in jobs.values()}
    assert len(reasons) == 1
    (reason,) = reasons
    assert reason == (
        f"job {stubborn} timed out after 0.5s and its task did not stop within the 0.5s "
        "kill grace, so its child was killed; the child was running 3 jobs, which all "
        "failed with it"
    )
    # And the worker goes on with a new child
    worker.wait_pool_size(1, timeout=10)
    release.touch()
    assert wait_for_job(queue, held_jobs(queue, release, 1)[0]).state == "completed"
    assert worker.stop() == 0


def test_a_task_left_behind_that_ignores_cancellation_retires_the_child_after_its_jobs(
    start_worker: StartWorker, queue: Queue, tmp_path: Path
) -> None:
    # Given one child running two held jobs and one that leaves behind a task
    # which swallows its cancellation
    release = tmp_path / "release"
    holding = held_jobs(queue, release, 2)
    leaker = queue.add("leak").id
    worker = start_worker("--async-concurrency", "3", procs=1, modules=MODULES)
    child_pid = running_jobs(queue, holding)[holding[0]].progress["pid"]

    # When the leaking job ends, and more jobs come
    assert wait_for_job(queue, leaker).result == child_pid
    line = worker.wait_for_line(r"child leaves after this job, to be replaced")
    later = [queue.add("nap", 0).id for _ in range(3)]

    # Then the jobs it still runs finish there, and no later job runs there
    assert "ignored their cancellation" in line.string
    release.touch()
    for job in wait_for_jobs(queue, holding, ("completed",), 10).values():
        assert job.result["pid"] == child_pid
    for job in wait_for_jobs(queue, later, ("completed",), 10).values():
        assert job.result["pid"] != child_pid
    assert worker.stop() == 0


def test_max_jobs_per_child_counts_the_jobs_a_child_runs_at_once(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given 9 async jobs, and children replaced after 3 jobs that run up to 5 at once
    job_ids = [queue.add("nap", 0.2).id for _ in range(9)]

    # When one child at a time runs them
    worker = start_worker(
        "--async-concurrency", "5", "--max-jobs-per-child", "3", procs=1, modules=MODULES
    )
    jobs = wait_for_jobs(queue, job_ids, ("completed",), 20)

    # Then no child ran more than 3 of them
    per_child: dict[int, int] = defaultdict(int)
    for job in jobs.values():
        per_child[job.result["pid"]] += 1
    assert max(per_child.values()) <= 3
    assert worker.stop() == 0


# -- what kills a child ------------------------------------------------------------------
def test_a_segfault_fails_exactly_the_jobs_in_that_child(
    start_worker: StartWorker, queue: Queue, tmp_path: Path
) -> None:
    # Given two children running 5 async jobs each, one of which will crash its child
    release, crash = tmp_path / "release", tmp_path / "crash"
    holding = held_jobs(queue, release, 9)
    crasher = queue.add("crash_when", {"release": str(crash)}).id
    worker = start_worker("--async-concurrency", "5", procs=2, modules=MODULES)
    where = {
        job_id: job.progress["pid"]
        for job_id, job in running_jobs(queue, [*holding, crasher]).items()
    }

    # When that job segfaults its child
    crash.touch()
    wait_for_job(queue, crasher, ("failed",), 10)
    release.touch()
    jobs = wait_for_jobs(queue, holding, timeout=10)
    jobs[crasher] = wait_for_job(queue, crasher)

    # Then exactly the jobs that ran in that child failed, each with the same reason
    failed = {job_id for job_id, job in jobs.items() if job.state == "failed"}
    assert failed == {job_id for job_id, pid in where.items() if pid == where[crasher]}
    assert {jobs[job_id].error for job_id in failed} == {
        "child killed by signal 11 (SIGSEGV); the child was running 5 jobs, which all "
        "failed with it"
    }
    # And the others completed in the other child
    assert {job.state for job_id, job in jobs.items() if job_id not in failed} == {"completed"}
    worker.wait_pool_size(2, timeout=10)
    assert worker.stop() == 0


def test_a_memory_kill_fails_every_job_the_child_ran_with_one_reason(
    start_worker: StartWorker, queue: Queue, tmp_path: Path
) -> None:
    # Given one child with a memory limit, running two held jobs and one that
    # will take more memory than the limit
    release, grow = tmp_path / "release", tmp_path / "grow"
    holding = held_jobs(queue, release, 2)
    hog = queue.add("bloat", {"release": str(grow), "bytes": 300 * 1024 * 1024}).id
    worker = start_worker(
        "--async-concurrency", "3", "--max-memory-per-child", "150M", procs=1, modules=MODULES
    )
    running_jobs(queue, [*holding, hog])

    # When that job grows past the limit
    grow.touch()
    jobs = wait_for_jobs(queue, [hog, *holding], ("failed",), 15)

    # Then the child is killed, and its three jobs fail with one reason that says so
    reasons = {job.error for job in jobs.values()}
    assert len(reasons) == 1
    assert re.fullmatch(
        r"memory limit exceeded \(\d+ MiB > 150 MiB\); the child was running 3 jobs, "
        r"which all failed with it",
        reasons.pop() or "",
    )
    worker.wait_pool_size(1, timeout=10)
    assert worker.stop() == 0


def test_a_job_whose_stored_data_is_bad_fails_alone_in_a_shared_child(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given two async jobs, one of whose stored data is not JSON
    broken = queue.add("nap", "0.2", attempts=3)
    queue.client.hset(queue.keys.job(broken.id), "data", b"{not json")
    sound = queue.add("nap", "0.2")

    # When one child may run both at once
    worker = start_worker("--async-concurrency", "2", procs=1, modules=MODULES)
    jobs = wait_for_jobs(queue, [broken.id, sound.id], timeout=15)

    # Then the broken one fails for good, saying why, and the other completes
    failed = jobs[broken.id]
    assert (failed.state, failed.attempts_made) == ("failed", 1), failed.fields
    assert (failed.error or "").startswith("the job's stored data is not valid JSON: ")
    assert jobs[sound.id].state == "completed"
    assert worker.stop() == 0


# -- what each job reports is its own ----------------------------------------------------------
def test_progress_and_logs_of_concurrent_jobs_reach_their_own_job(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given 10 async jobs that log and report progress naming themselves, yielding between
    names = {queue.add("chatty", f"job-{index}").id: f"job-{index}" for index in range(10)}

    # When one child runs them all at once
    worker = start_worker("--async-concurrency", "10", procs=1, modules=MODULES)
    jobs = wait_for_jobs(queue, names, ("completed",), 15)

    # Then each job's log and progress are its own
    for job_id, job in jobs.items():
        name = names[job_id]
        assert job.logs() == [f"{name} line {step}" for step in range(5)]
        assert job.progress == {"who": name, "step": 4}
    assert worker.stop() == 0


def test_durable_steps_of_concurrent_jobs_are_recorded_for_their_own_job(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given 6 async jobs that record steps (awaited, plain, from a thread) while
    # the others run
    names = {queue.add("stepper", f"job-{index}").id: f"job-{index}" for index in range(6)}

    # When one child runs them all at once
    worker = start_worker("--async-concurrency", "6", procs=1, modules=MODULES)
    jobs = wait_for_jobs(queue, names, ("completed",), 15)

    # Then each job recorded its own steps, and got its own results back
    for job_id, job in jobs.items():
        name = names[job_id]
        expected = {}
        for step in range(3):
            expected[f"async-{step}"] = f"{name}:{step}"
            expected[f"plain-{step}"] = f"{name}:plain:{step}"
            expected[f"thread-{step}"] = f"{name}:plain:{-step}"
        assert job.steps == expected
        assert job.result == list(expected.values())
    assert worker.stop() == 0


# -- metrics ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def gauges(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def test_metrics_count_running_jobs_not_busy_children(
    start_worker: StartWorker, queue: Queue, tmp_path: Path
) -> None:
    # Given one child running 6 async jobs, of up to 8
    release = tmp_path / "release"
    job_ids = held_jobs(queue, release, 6)
    port = free_port()
    worker = start_worker(
        "--async-concurrency",
        "8",
        "--metrics-port",
        str(port),
        "--metrics-host",
        "127.0.0.1",
        procs=1,
        modules=MODULES,
    )
    running_jobs(queue, job_ids)

    # When its metrics are scraped
    found = gauges(port)

    # Then they count 6 running jobs, of 8 slots
    assert found["sandboxq_active_jobs"] == 6
    assert found["sandboxq_job_slots"] == 8
    assert found["sandboxq_pool_size"] == 1
    release.touch()
    wait_for_jobs(queue, job_ids, ("completed",), 10)
    assert worker.stop() == 0


# -- the option ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-3", "1.5", "many", str(MAX_ASYNC_CONCURRENCY + 1)])
def test_the_command_line_refuses_a_bad_async_concurrency(value: str) -> None:
    # When a worker is started with a value that is not 1 to the maximum
    done = run_sandboxq("worker", "tests.concurrent_jobs", "--async-concurrency", value)

    # Then it exits 2, naming the flag and the value, before connecting anywhere
    assert done.returncode == 2
    assert re.search(rf"--async-concurrency must be .*got '{re.escape(value)}'", done.stderr)


@pytest.mark.parametrize("value", [0, MAX_ASYNC_CONCURRENCY + 1, 2.0, True, "4"])
def test_a_worker_refuses_a_bad_async_concurrency(value: Any, redis_url: str) -> None:
    # When a Worker is made with an async_concurrency that is not an int from 1 to the maximum
    with pytest.raises(ValueError, match=r"async_concurrency must be") as refused:
        Worker(["q"], {"x": print}, url=redis_url, async_concurrency=value)

    # Then the error names the value
    assert repr(value) in str(refused.value) or str(value) in str(refused.value)
