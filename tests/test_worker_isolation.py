"""The sandbox: whatever a job does to its child, only that job fails.

Every test runs a real ``sandboxq worker tests.jobs`` subprocess with two
children. One child runs a bystander job (a short sleep) while the other
crashes in one particular way. Each test then checks that only the crashing
job failed, with the reason the parent decoded, that the bystander and a
next job complete, and that the pool is back to full size within a second.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandboxq import Backoff, Job, Queue
from sandboxq.worker.cpus import available_cpus
from tests.worker_harness import (
    WorkerProcess,
    assert_counts,
    process_title,
    wait_for_job,
    wait_for_jobs,
    wait_until,
)

StartWorker = Callable[..., WorkerProcess]

PROCS = 2
#: How long the bystander job runs next to the crash.
BYSTANDER_SECONDS = 0.8


def start_bystander(worker: WorkerProcess, queue: Queue) -> tuple[Job, int]:
    """A job that runs on one child while the other one crashes; returns the
    job and the pid of the child running it. Its own timeout overrides any
    --default-timeout a test gives the worker."""
    bystander = queue.add("sleep", BYSTANDER_SECONDS, timeout=30)
    return bystander, worker.child_running("sleep", bystander.id)


def assert_only_that_job_failed(
    worker: WorkerProcess,
    queue: Queue,
    *,
    crashed: Job,
    error: str,
    bystander: Job,
    bystander_pid: int,
    pool_before: list[int],
    child_survives: bool = False,
) -> Job:
    """The shared Then of every crash test. ``error`` is a regex the job's
    error must match in full. Returns the failed job."""
    failed = wait_for_job(queue, crashed.id, timeout=10.0)
    assert failed.state == "failed", failed.fields
    assert failed.error is not None and re.fullmatch(error, failed.error), failed.error
    assert failed.attempts_made == 1
    assert failed.stalls == 0

    # The pool is back to full size within a second of the failure.
    pool_after = worker.wait_pool_size(PROCS, timeout=1.0)
    assert bystander_pid in pool_after, "the bystander's child must not be touched"
    if child_survives:
        assert sorted(pool_after) == sorted(pool_before)
    else:
        replaced = set(pool_before) - set(pool_after)
        assert len(replaced) == 1 and bystander_pid not in replaced, (pool_before, pool_after)

    # The job that shared the worker with the crash is unaffected.
    finished_bystander = wait_for_job(queue, bystander.id)
    assert finished_bystander.state == "completed", finished_bystander.fields
    assert finished_bystander.result == "slept"

    # A next job succeeds.
    next_job = queue.add("ok", "after the crash")
    done = wait_for_job(queue, next_job.id)
    assert done.state == "completed", done.fields
    assert done.result["echo"] == "after the crash"
    assert done.result["pid"] in worker.children()

    # Only that job failed.
    assert_counts(queue, completed=2, failed=1)
    assert worker.running()
    return failed


def crash_case(
    start_worker: StartWorker,
    queue: Queue,
    job_name: str,
    data: Any = None,
    *,
    error: str,
    worker_args: tuple[str, ...] = (),
    job_options: dict[str, Any] | None = None,
    from_outside: int | None = None,
    child_survives: bool = False,
) -> Job:
    """Given a worker with two children, one busy with a bystander job;
    when ``job_name`` runs on the other (and, with ``from_outside``, the test
    sends that signal to the child running it); then only that job fails."""
    worker = start_worker(*worker_args, procs=PROCS)
    pool_before = worker.wait_pool_size(PROCS, timeout=5.0)
    bystander, bystander_pid = start_bystander(worker, queue)

    crashed = queue.add(job_name, data, **(job_options or {}))
    if from_outside is not None:
        os.kill(worker.child_running(job_name, crashed.id), from_outside)

    return assert_only_that_job_failed(
        worker,
        queue,
        crashed=crashed,
        error=error,
        bystander=bystander,
        bystander_pid=bystander_pid,
        pool_before=pool_before,
        child_survives=child_survives,
    )


# -- one crash mode per test -------------------------------------------------------
def test_handler_exception_fails_the_job_and_the_child_survives(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a worker; when a handler raises ValueError
    failed = crash_case(
        start_worker,
        queue,
        "raise_error",
        42,
        error=r"ValueError: bad input 42",
        child_survives=True,
    )
    # Then the job carries the traceback, and no child was replaced (checked above)
    assert failed.traceback is not None
    assert "Traceback (most recent call last)" in failed.traceback
    assert "ValueError: bad input 42" in failed.traceback


def test_child_exit_code_fails_the_job(start_worker: StartWorker, queue: Queue) -> None:
    # Given a worker; when a handler calls os._exit(3); then its job fails
    # with the exit code and the child is replaced
    failed = crash_case(start_worker, queue, "exit_code", 3, error=r"child exited with code 3")
    assert not failed.traceback


def test_segfault_fails_the_job(start_worker: StartWorker, queue: Queue) -> None:
    # Given a worker; when a handler dereferences NULL through ctypes; then
    # its job fails with the decoded signal
    crash_case(start_worker, queue, "segfault", error=r"child killed by signal 11 \(SIGSEGV\)")


def test_external_sigkill_is_reported_as_a_probable_oom_kill(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a worker running a long job; when something outside the worker
    # (the OOM killer, an operator) SIGKILLs the child running it; then the
    # job fails as a probable OOM kill, since no timeout was behind it
    crash_case(
        start_worker,
        queue,
        "sleep",
        30,
        from_outside=signal.SIGKILL,
        error=r"child killed by signal 9 \(SIGKILL\), probably by the out-of-memory killer",
    )


def test_external_sigterm_to_a_child_fails_only_its_job(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a worker running a long job; when something outside sends SIGTERM
    # to that child (children do not keep the parent's handlers); then the
    # job fails with that signal, and the parent keeps running
    crash_case(
        start_worker,
        queue,
        "sleep",
        30,
        from_outside=signal.SIGTERM,
        error=r"child killed by signal 15 \(SIGTERM\)",
    )


def test_handler_killing_itself_with_a_signal_fails_the_job(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a worker; when a handler sends SIGABRT to its own process; then
    # the job fails with that signal
    crash_case(
        start_worker,
        queue,
        "kill_self",
        int(signal.SIGABRT),
        error=r"child killed by signal 6 \(SIGABRT\)",
    )


def test_timeout_stops_a_hanging_job_with_sigterm(start_worker: StartWorker, queue: Queue) -> None:
    # Given a job with a 0.5 s timeout and a 1 s kill grace; when its handler
    # hangs; then SIGTERM ends it at the timeout, without waiting for the grace
    failed = crash_case(
        start_worker,
        queue,
        "hang",
        worker_args=("--kill-grace", "1"),
        job_options={"timeout": 0.5},
        error=r"timed out after 0\.5s",
    )
    assert failed.started_at is not None and failed.finished_at is not None
    ran_for = failed.finished_at - failed.started_at
    assert 0.45 <= ran_for < 1.3, ran_for


def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a worker whose jobs time out after 0.5 s by default, with a 1 s
    # kill grace; when a handler ignores SIGTERM and hangs; then SIGKILL ends
    # it after the grace, and the reason is still the timeout
    failed = crash_case(
        start_worker,
        queue,
        "ignore_term_and_hang",
        worker_args=("--default-timeout", "0.5", "--kill-grace", "1"),
        error=r"timed out after 0\.5s",
    )
    assert failed.started_at is not None and failed.finished_at is not None
    ran_for = failed.finished_at - failed.started_at
    assert ran_for >= 1.45, f"killed before the grace was over: {ran_for:.3f}s"
    assert ran_for < 4.0, ran_for


def test_memory_limit_kills_the_child_and_fails_the_job(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a worker whose children may use 100 MiB; when a handler touches
    # 200 MiB; then the parent kills that child and names the limit
    failed = crash_case(
        start_worker,
        queue,
        "allocate",
        200,
        worker_args=("--max-memory-per-child", "100M"),
        error=r"memory limit exceeded \((\d+) MiB > 100 MiB\)",
    )
    assert failed.error is not None
    used = int(re.findall(r"\d+", failed.error)[0])
    assert 100 < used < 400, failed.error


# -- recycling -------------------------------------------------------------------
def test_max_jobs_per_child_recycles_children(start_worker: StartWorker, queue: Queue) -> None:
    # Given a one-child worker that replaces its child after 2 jobs
    worker = start_worker("--max-jobs-per-child", "2", procs=1)
    first_child = worker.wait_pool_size(1, timeout=5.0)[0]

    # When 6 jobs run, one after another
    added = [queue.add("ok", n) for n in range(6)]
    jobs = wait_for_jobs(queue, [job.id for job in added])

    # Then they all complete, on three children that ran two jobs each
    assert all(job.state == "completed" for job in jobs.values()), [
        job.fields for job in jobs.values()
    ]
    pids = Counter(job.result["pid"] for job in jobs.values())
    assert sorted(pids.values()) == [2, 2, 2], pids
    assert first_child in pids
    # and the last child was replaced too: the pool is full, with a new pid
    # (the job's result is in Redis before the retiring child has gone)
    wait_until(
        lambda: (now := worker.children()) and len(now) == 1 and now[0] not in pids,
        5.0,
        "a new child in place of the last one",
    )
    assert queue.counts()["failed"] == 0


# -- process titles -----------------------------------------------------------------
def test_process_titles_show_queue_child_index_and_current_job(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a worker with two children
    worker = start_worker(procs=PROCS)
    pool = worker.wait_pool_size(PROCS, timeout=5.0)

    # Then the parent and the idle children say what they are
    assert process_title(worker.pid) == f"sandboxq parent: {queue.name} [2 procs]"
    titles = sorted(process_title(pid) or "" for pid in pool)
    assert titles == ["sandboxq child 1: idle", "sandboxq child 2: idle"]

    # When a job runs, its child's title names the job
    job = queue.add("sleep", 0.5)
    busy = worker.child_running("sleep", job.id)
    assert re.fullmatch(rf"sandboxq child [12]: sleep#{job.id}", process_title(busy) or "")

    # Then the child goes back to idle once the job is done
    assert wait_for_job(queue, job.id).state == "completed"
    wait_until(lambda: (process_title(busy) or "").endswith(": idle"), 2.0, "the child to be idle")


@pytest.mark.parametrize("pinned", [False, True], ids=["inherited-affinity", "pinned-to-one-cpu"])
def test_procs_auto_starts_one_child_per_usable_cpu(
    start_worker: StartWorker, queue: Queue, pinned: bool
) -> None:
    # Given the CPUs a process may use (its affinity, capped by the cgroup
    # quota), possibly narrowed to one CPU for the worker
    allowed = os.sched_getaffinity(0)
    try:
        if pinned:
            os.sched_setaffinity(0, {min(allowed)})  # the worker inherits it
        expected = available_cpus()
        assert expected <= len(os.sched_getaffinity(0))

        # When a worker starts with --procs auto
        worker = start_worker(procs="auto")
    finally:
        os.sched_setaffinity(0, allowed)

    # Then its READY line and its pool have that many children
    assert worker.matching_lines(rf"sandboxq worker ready pid={worker.pid} .* procs={expected}$")
    assert len(worker.wait_pool_size(expected, timeout=5.0)) == expected
    if pinned:
        assert expected == 1


def test_cgroup_quota_is_read_along_the_process_cgroup_path(tmp_path: Path) -> None:
    # Given a v2 hierarchy whose quota is set on a parent cgroup, and a v1 one
    from sandboxq.worker.cpus import _cgroup_dirs, _quota

    (tmp_path / "app" / "worker").mkdir(parents=True)
    (tmp_path / "app" / "cpu.max").write_text("150000 100000\n")
    (tmp_path / "app" / "worker" / "cpu.max").write_text("max 100000\n")
    v1 = tmp_path / "cpu" / "job"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")

    # When the directories that apply are listed and their quotas read
    dirs = _cgroup_dirs(tmp_path, "0::/app/worker\n3:cpu,cpuacct:/job\n4:memory:/job\n")
    quotas = [q for d in dirs if (q := _quota(d)) is not None]

    # Then the nested quota and the v1 one are both found
    assert tmp_path / "app" / "worker" in dirs and v1 in dirs
    assert sorted(quotas) == [0.5, 1.5]


def test_a_corrupt_frame_kills_only_the_child_that_sent_it() -> None:
    # Given a child process and its pipe, over which it sends a corrupt frame
    import select
    import socket as socket_module
    import subprocess
    import sys

    from sandboxq.worker.child_state import Child
    from sandboxq.worker.pool import Pool
    from sandboxq.worker.settings import WorkerSettings

    parent_end, child_end = socket_module.socketpair()
    parent_end.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_PASSCRED, 1)
    parent_end.setblocking(False)
    sends_garbage = (
        "import socket, struct, sys, time\n"
        "end = socket.socket(fileno=int(sys.argv[1]))\n"
        "end.sendall(struct.pack('>I', 2**31) + b'{')\n"
        "time.sleep(30)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", sends_garbage, str(child_end.fileno())],
        pass_fds=[child_end.fileno()],
    )
    child = Child(1, process.pid, parent_end)
    pool = Pool(WorkerSettings(procs=1), {})
    assert select.select([parent_end], [], [], 10)[0], "the child sent nothing"
    # When the parent reads it
    messages, closed = pool.read(child)
    # Then the parent survives, the child is killed with a reason, and never reused
    assert (messages, closed) == ([], True)
    assert process.wait(5) == -signal.SIGKILL
    assert child.kill_reason is not None and "corrupt frame" in child.kill_reason
    assert child.retiring
    parent_end.close()
    child_end.close()


# -- values a handler controls: checked like user input, never fatal to the parent --
@pytest.mark.parametrize(
    ("job_name", "data", "error"),
    [
        # raised as given: the constructor refuses the value in the handler
        ("retry_nan", None, r"ValueError: Retry delay must be a number of seconds, got nan"),
        (
            "rate_limited_inf",
            None,
            r"ValueError: RateLimited retry_after must be a finite number of seconds, got inf",
        ),
        # a delay changed after the constructor checked it: the child checks again
        (
            "retry_delay_changed",
            "nan",
            r"ValueError: Retry\.delay must be a number of seconds, got nan",
        ),
        (
            "retry_delay_changed",
            "1e300",
            r"ValueError: Retry\.delay must be at most 3153600000 seconds \(100 years\), "
            r"got 1e\+300",
        ),
        # an exception that cannot be described still fails only its job
        (
            "unprintable_error",
            None,
            r"_Unprintable: <str\(\) of the exception raised RuntimeError>",
        ),
        # JSON has no NaN: orjson would have stored null
        (
            "nan_result",
            None,
            r"ValueError: result holds nan at \['ratio'\]: JSON has no NaN or Infinity",
        ),
        # a result over the frame limit (64 MiB) used to end the child with code 70
        (
            "big_result",
            65 * 1024 * 1024,
            r"ValueError: result is 68157440 bytes as JSON, over the limit of 1048576 bytes "
            r"\(--max-result-bytes\)",
        ),
    ],
)
def test_a_bad_value_from_a_handler_fails_only_its_job(
    start_worker: StartWorker, queue: Queue, job_name: str, data: Any, error: str
) -> None:
    # Given a worker with a bystander job; when a handler hands back a value
    # the worker cannot use; then only that job fails, saying what was wrong,
    # the child that ran it carries on, and so do the parent and the bystander
    crash_case(start_worker, queue, job_name, data, error=error, child_survives=True)


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (
            ["done", "$id", "retry", "", "", "$nan"],
            r"child sent an invalid frame: the delay must be a number of seconds, got nan",
        ),
        (
            ["done", "$id", "ratelimited", "", "", "$inf"],
            r"child sent an invalid frame: the delay must be a finite number of seconds, got inf",
        ),
        (["done", "$id"], r"child sent an invalid frame: a done frame has 6 items, got .*"),
        (
            ["done", "$id", "exploded", "", "", 0.0],
            r"child sent an invalid frame: unknown outcome 'exploded'",
        ),
        (
            ["done", "$id", "failed", "$bytes", "", 0.0],
            r"child sent an invalid frame: a done frame's value and traceback must be str",
        ),
        (["log", "$id", 5], r"child sent an invalid frame: a 'log' frame must carry one str, .*"),
        (["hello", "$id"], r"child sent an invalid frame: unknown message .*"),
    ],
)
def test_a_forged_frame_kills_only_the_child_that_sent_it(
    start_worker: StartWorker, queue: Queue, frame: list[Any], error: str
) -> None:
    # Given a worker with a bystander job; when a handler writes a frame to
    # its pipe behind sandboxq's back that the protocol does not allow; then
    # the parent checks it like user input: that child is killed and its job
    # fails with the reason, and the parent and the bystander carry on
    crash_case(start_worker, queue, "forge_frame", frame, error=error)


def test_backoff_past_a_thousand_attempts_does_not_overflow(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given an always-failing job with exponential backoff capped at 2 ms,
    # 1,029 attempts in, and 3 left (2 ** 1029 seconds overflows a float)
    failing = queue.add(
        "always_fail",
        attempts=1032,
        backoff=Backoff.exponential(0.001, max_delay=0.002),
        delay=3600,
    )
    queue.client.hset(queue.keys.job(failing.id), "attempts_made", 1029)
    worker = start_worker(procs=PROCS)
    bystander, _pid = start_bystander(worker, queue)

    # When it runs its last attempts
    assert queue.promote(failing.id)

    # Then each failure is retried after the capped delay, the last one fails
    # it for good, and the parent and the bystander carry on
    failed = wait_for_job(queue, failing.id, timeout=15.0)
    assert failed.state == "failed", failed.fields
    assert failed.attempts_made == 1032
    assert failed.error == "RuntimeError: attempt 1032 failed"
    assert wait_for_job(queue, bystander.id).state == "completed"
    assert worker.running()
    assert not worker.matching_lines("Traceback")


def socket_inodes(pid: int) -> set[str]:
    """The sockets a process holds open, as ``socket:[inode]`` names."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith("socket:"):
                found.add(target)
    return found


def test_a_replacement_child_holds_none_of_the_parents_redis_connections(
    start_worker: StartWorker, queue: Queue
) -> None:
    """A child forked to replace one that died, while the parent's Redis
    connections are open, closes its copies: children never talk to Redis,
    and a copy would keep a connection open after the parent closed it
    (Redis would then hand a wake-up to a wait nobody reads)."""
    worker = start_worker(procs=1)
    (first,) = worker.wait_pool_size(1, timeout=5.0)
    crashed = queue.add("exit_code", 3)
    wait_for_job(queue, crashed.id, "failed", timeout=10)
    (replacement,) = wait_until(
        lambda: [pid for pid in worker.children() if pid != first], 10, "a replacement child"
    )
    held = socket_inodes(replacement)
    assert len(held) == 1, held  # its end of the pipe to the parent, nothing else
